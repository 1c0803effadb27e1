"""Connection multiplexing, client side: hand a session to a running master.

A later `ssh3` to a destination whose ControlPath socket is live sends its request
and its stdin/stdout/stderr file descriptors (SCM_RIGHTS) to the master, which opens
a new conversation on its QUIC connection (no handshake, no new login by the user)
and does all the I/O itself. This process only waits for the exit status, relays
SIGWINCH, and exits with the status. Like OpenSSH's mux client.

Start-up cost is the point of multiplexing, so this module imports only what the
interpreter already has loaded or what is tiny (os, sys, struct, array, errno, stat,
and the C modules _socket and _signal rather than their enum-building wrappers) and
nothing of asyncio, QUIC or TLS. See docs/multiplexing.md.

Mux protocol (a SOCK_STREAM unix socket, one frame = `type:u8 length:u32be payload`):

  client → master   'S' session request: fields (below); SCM_RIGHTS fds 0, 1, 2
                    'W' the window size changed (master re-reads it from the tty fd)
                    'C' check            'X' exit           'T' stop listening
  master → client   'E' exit status (i32be)   'F' failure text (client exits 255)
                    'N' "cannot serve now, connect yourself" (client falls back)
                    'P' master pid (u32be), the answer to C, X and T

Fields: `count:u16be` then per field `klen:u16be key vlen:u32be value`. The first
field of every request is `version` = MUX_VERSION; a master of another version
answers 'N' (a fresh connection is made instead).
"""

from __future__ import annotations

import _signal
import _socket  # socket.py builds its enums at import (~2 ms): the C module suffices
import array
import errno
import os
import stat
import struct
import sys

MUX_VERSION = b"ssh3-mux-1"
_HEADER = struct.Struct(">BI")
MAX_FRAME = 1 << 20


class MuxUnavailable(Exception):
    """No usable master at the path (absent, stale or refusing)."""


# ---------------------------------------------------------------- framing


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind[0], len(payload)) + payload


def encode_fields(fields: list[tuple[bytes, bytes]]) -> bytes:
    parts = [struct.pack(">H", len(fields))]
    for key, value in fields:
        parts.append(struct.pack(">H", len(key)) + key + struct.pack(">I", len(value)) + value)
    return b"".join(parts)


def decode_fields(data: bytes) -> list[tuple[bytes, bytes]]:
    """Raises ValueError on malformed input (the master answers 'F')."""
    try:
        (count,) = struct.unpack_from(">H", data, 0)
        pos = 2
        out = []
        for _ in range(count):
            (klen,) = struct.unpack_from(">H", data, pos)
            key = data[pos + 2:pos + 2 + klen]
            pos += 2 + klen
            (vlen,) = struct.unpack_from(">I", data, pos)
            value = data[pos + 4:pos + 4 + vlen]
            if len(key) != klen or len(value) != vlen:
                raise ValueError("truncated field")
            pos += 4 + vlen
            out.append((key, value))
    except struct.error as exc:
        raise ValueError(f"malformed request: {exc}") from None
    if pos != len(data):
        raise ValueError("trailing bytes after the fields")
    return out


class FrameReader:
    """Splits a byte stream into (type, payload) frames."""

    def __init__(self) -> None:
        self.buf = b""
        self.pending: list[tuple[bytes, bytes]] = []  # complete, not yet taken

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self.buf, 0)
            if length > MAX_FRAME:
                raise ValueError(f"mux frame of {length} bytes")
            if len(self.buf) < _HEADER.size + length:
                break
            out.append((bytes([kind]), self.buf[_HEADER.size:_HEADER.size + length]))
            self.buf = self.buf[_HEADER.size + length:]
        return out


def session_fields(command: bytes | None, pty: bool, term: str, host: str, *,
                   forward_agent: bool = False, subsystem: bool = False,
                   quiet: bool = False, escape: str | None = None,
                   env: list[tuple[str, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    """A session request's fields (ssh3_client.mux_master.request_from_fields
    reads them back)."""
    fields: list[tuple[bytes, bytes]] = []
    if command is not None:
        fields.append((b"command", command))
    fields += [(b"pty", b"1" if pty else b"0"), (b"term", os.fsencode(term)),
               (b"host", os.fsencode(host))]
    for flag, on in ((b"forward_agent", forward_agent), (b"subsystem", subsystem),
                     (b"quiet", quiet)):
        if on:
            fields.append((flag, b"1"))
    if escape is not None:
        fields.append((b"escape", os.fsencode(escape)))
    fields += [(b"env:" + os.fsencode(name), value) for name, value in env or ()]
    return fields


# ---------------------------------------------------------------- socket


def connect(path: str) -> _socket.socket:
    """A connection to the master at `path`; a stale socket (nobody listening) is
    removed. Raises MuxUnavailable when there is no master."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.ECONNREFUSED:
            remove_stale(path)
            raise MuxUnavailable(f"stale control socket {path} removed") from None
        raise MuxUnavailable(f"control socket {path}: {exc.strerror or exc}") from None
    return sock


def remove_stale(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


def _exchange(sock: _socket.socket, reader: FrameReader) -> tuple[bytes, bytes]:
    """The next frame from the master (EOFError when it hung up)."""
    while not reader.pending:
        data = sock.recv(65536)
        if not data:
            raise EOFError
        reader.pending += reader.feed(data)
    return reader.pending.pop(0)


def control_command(path: str, command: str) -> int:
    """`-O check|exit|stop`, with OpenSSH's messages (on stderr) and exit codes."""
    kind = {"check": b"C", "exit": b"X", "stop": b"T"}.get(command)
    if kind is None:
        _say(f"Invalid multiplex command: {command}")
        return 255
    try:
        sock = connect(path)
    except MuxUnavailable:
        _say(f"Control socket connect({path}): {os.strerror(errno.ENOENT)}")
        return 255
    try:
        sock.sendall(frame(kind))
        answer, payload = _exchange(sock, FrameReader())
    except (OSError, EOFError, ValueError):
        _say(f"Control socket {path}: the master did not answer")
        return 255
    finally:
        sock.close()
    if answer != b"P" or len(payload) != 4:
        _say(f"Control socket {path}: unexpected answer")
        return 255
    pid = struct.unpack(">I", payload)[0]
    if command == "check":
        _say(f"Master running (pid={pid})")
    elif command == "exit":
        _say("Exit request sent.")
    else:
        _say("Stop listening request sent.")
    return 0


def run_session(path: str, fields: list[tuple[bytes, bytes]], stdin_fd: int = 0,
                pty: bool = False) -> int | None:
    """Run a session through the master; its exit status, or None when there is
    no master to use (the caller connects by itself then)."""
    try:
        sock = connect(path)
    except MuxUnavailable:
        return None
    saved = None
    if pty and os.isatty(stdin_fd):
        import termios  # a C module: costs nothing worth measuring

        try:
            saved = termios.tcgetattr(stdin_fd)
        except termios.error:
            saved = None
    # _signal: signal.py wraps every call in enum conversions, which cost here
    previous = {s: _signal.getsignal(s) for s in (_signal.SIGTERM, _signal.SIGHUP,
                                                   _signal.SIGWINCH)}
    try:
        payload = encode_fields([(b"version", MUX_VERSION), *fields])
        try:
            sock.sendmsg([frame(b"S", payload)], [(
                _socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", [stdin_fd, 1, 2]))])
        except OSError:
            return None
        if pty:
            _relay_winch(sock)
        _on_termination()
        try:
            return _wait_status(sock)
        except KeyboardInterrupt:
            return 130  # like a fresh ssh3; the master ends the session on our EOF
        except _Terminated:
            return 255
    finally:
        sock.close()
        for signum, handler in previous.items():  # a fallback run installs its own
            _signal.signal(signum, handler)
        if saved is not None:
            import termios

            try:  # the master restores the mode; this is in case it died
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
            except termios.error:
                pass


class _Terminated(Exception):
    pass


def _on_termination() -> None:
    """SIGTERM/SIGHUP end the wait (exit 255, as a fresh ssh3 does); closing the
    socket makes the master end the session, which hangs up the remote command."""

    def terminate(_signum: int, _frame: object) -> None:
        raise _Terminated

    for signum in (_signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(signum, terminate)


def _relay_winch(sock: _socket.socket) -> None:
    def on_winch(_signum: int, _frame: object) -> None:
        try:
            sock.send(frame(b"W"))
        except OSError:
            pass

    _signal.signal(_signal.SIGWINCH, on_winch)


def _wait_status(sock: _socket.socket) -> int | None:
    reader = FrameReader()
    while True:
        try:
            kind, payload = _exchange(sock, reader)
        except (EOFError, ConnectionError):
            _say("ssh3: the multiplexing master closed the connection")
            return 255
        except ValueError as exc:
            _say(f"ssh3: bad answer from the multiplexing master: {exc}")
            return 255
        if kind == b"E" and len(payload) == 4:
            return struct.unpack(">i", payload)[0] & 0xFF
        if kind == b"F":
            _say(payload.decode("utf-8", "replace"))
            return 255
        if kind == b"N":
            return None


def _say(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except OSError:
        pass


# ---------------------------------------------------------------- options


class Plan:
    """ControlMaster / ControlPath / ControlPersist for one run."""

    def __init__(self, master: str, path: str | None, persist: float | None) -> None:
        self.master = master  # "no", "yes" or "auto"
        self.path = path  # None: no multiplexing
        self.persist = persist  # None: no; seconds after the last client; inf: yes

    def __repr__(self) -> str:
        return f"Plan({self.master!r}, {self.path!r}, {self.persist!r})"


def parse_time(text: str) -> float:
    """sshd time format: 90, 90s, 10m, 1h30m, 1d, 1w."""
    units = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    total = 0.0
    number = ""
    for ch in text.strip().lower() + " ":
        if ch.isdigit():
            number += ch
        elif number and (ch in units or ch == " "):
            total += int(number) * units[ch.strip()]
            number = ""
        elif ch != " " or number:
            raise ValueError(f"bad time {text!r}")
    if not text.strip():
        raise ValueError("empty time")
    return total


def plan(options: dict[str, str], force_master: int = 0) -> Plan:
    """From the -o/config options (lower-cased keys) and -M (count: -MM is ask)."""
    master = options.get("controlmaster", "no").strip().lower()
    master = {"true": "yes", "on": "yes", "false": "no", "off": "no", "ask": "auto",
              "autoask": "auto"}.get(master, master)
    if force_master:
        master = "yes" if force_master == 1 else "auto"
    if master not in ("yes", "no", "auto"):
        raise ValueError(f"bad ControlMaster {options.get('controlmaster')!r}")
    path = options.get("controlpath", "").strip() or None
    if path is not None and path.lower() == "none":
        path = None
    text = options.get("controlpersist", "no").strip().lower()
    persist: float | None
    if text in ("no", "false", "off"):
        persist = None
    elif text in ("yes", "true", "on"):
        persist = float("inf")
    else:
        persist = parse_time(text) or float("inf")  # 0 means "forever" too
    return Plan(master, path, persist)
