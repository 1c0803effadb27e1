"""Helpers for the end-to-end tests: real `ssh3-server` and `ssh3` subprocesses.

Nothing here is mocked. A `Server` is a real `ssh3-server` process listening on
127.0.0.1 with a port the kernel picked; a `Client` runs the real `ssh3` program with
its own HOME (so its known_hosts belongs to the test) and an explicit `-i` key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import functools
import getpass
import hashlib
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

BACKENDS = ("aioquic", "qh3")
BACKEND_PAIRS = [(s, c) for s in BACKENDS for c in BACKENDS]
HOST = "127.0.0.1"
DEFAULT_PATH = "/ssh3-term"
USER = getpass.getuser()

# PIDs of every ssh3-server these tests started (checked at the end of the session)
STARTED_SERVER_PIDS: set[int] = set()

_LISTEN_RE = re.compile(rb"ssh3-server: listening on (\S+) port (\d+)")


@functools.cache
def find_program(name: str) -> str:
    """The installed console script: next to the interpreter first (this skips the
    pyenv shim's start-up cost), else on PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (pip install -e .)")
    return found


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_key(directory: Path, name: str = "id_ed25519") -> Path:
    """A fresh passphrase-less Ed25519 key made by ssh-keygen; returns the private key path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e-test",
                    "-f", str(path)], check=True, timeout=30,
                   stdin=subprocess.DEVNULL, capture_output=True)
    return path


def cert_der(cert_pem: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    return cert.public_bytes(Encoding.DER)


def known_hosts_line(port: int, der: bytes, path: str = DEFAULT_PATH, host: str = HOST) -> str:
    """`host:port/path x509-certificate base64-std(DER)` (ssh3/known_hosts.py)."""
    return f"{host}:{port}{path} x509-certificate {base64.b64encode(der).decode()}\n"


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except OSError:
        return False


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """terminate, wait with a timeout, then kill: by PID, never by name."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)


# ---------------------------------------------------------------------- server


@dataclass
class Server:
    workdir: Path
    backend: str
    authorized_keys: Path
    url_path: str = DEFAULT_PATH
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def cert(self) -> Path:
        return self.workdir / "cert.pem"

    @property
    def key(self) -> Path:
        return self.workdir / "key.pem"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [find_program("ssh3-server"), "-bind", f"{HOST}:0", "-quic-backend", self.backend,
                "-url-path", self.url_path,
                "-authorized-keys-file", str(self.authorized_keys),
                "-generate-selfsigned-cert", "-cert", str(self.cert), "-key", str(self.key),
                *self.extra_args]
        env = dict(os.environ)
        env.pop("SSH3_QUIC_BACKEND", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log, env=env,
                                         start_new_session=True)
        STARTED_SERVER_PIDS.add(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTEN_RE.search(self.log_path.read_bytes())
            if match:
                self.port = int(match.group(2))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"ssh3-server did not start: {self.log()}")

    @contextlib.contextmanager
    def running(self) -> Iterator[Server]:
        """Started for the with-block, stopped by PID after it; session processes
        that outlive the server fail the test (they are killed then)."""
        try:
            yield self.start()
        finally:
            leftovers = self.stop()
        assert not leftovers, f"session processes outlived their server (killed now): {leftovers}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> list[int]:
        """Stop the server by PID. Returns the session processes that outlived it
        (they are killed then)."""
        if self.proc is None:
            return []
        descendants = descendant_pids(self.proc.pid) if self.proc.poll() is None else []
        stop_process(self.proc)
        wait_for(lambda: not any(pid_alive(p) for p in descendants), 5.0)
        leftovers = [p for p in descendants if pid_alive(p)]
        for p in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        return leftovers

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def der(self) -> bytes:
        return cert_der(self.cert)

    def known_hosts_line(self) -> str:
        return known_hosts_line(self.port, self.der, self.url_path)

    def target(self, path: str | None = None) -> str:
        return f"{HOST}:{self.port}{path if path is not None else self.url_path}"


# ---------------------------------------------------------------------- client


@dataclass
class Client:
    """Runs `ssh3` with its own HOME and key."""

    home: Path
    key: Path
    backend: str = "aioquic"

    @property
    def known_hosts(self) -> Path:
        return self.home / ".ssh3" / "known_hosts"

    def trust(self, server: Server) -> None:
        """Pre-seed known_hosts with the server's certificate."""
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.known_hosts, "a") as f:
            f.write(server.known_hosts_line())

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SSH3_QUIC_BACKEND", None)
        env["HOME"] = str(self.home)
        env.update(extra)
        return env

    def argv(self, server: Server, command: list[str] | str | None, *, path: str | None = None,
             key: Path | None = None, extra_args: list[str] | tuple[str, ...] = (),
             user: str | None = None) -> list[str]:
        cmd = [command] if isinstance(command, str) else list(command or [])
        target = server.target(path) if user is None else f"{user}@{server.target(path)}"
        return [find_program("ssh3"), "-i", str(key or self.key), "-quic-backend", self.backend,
                *extra_args, target, *cmd]

    def run(self, server: Server, command: list[str] | str | None, *, stdin: object = None,
            input: bytes | None = None, timeout: float = 60.0, path: str | None = None,
            key: Path | None = None, extra_args: list[str] | tuple[str, ...] = (),
            user: str | None = None,
            stdout: object = subprocess.PIPE) -> subprocess.CompletedProcess:
        """Run without a controlling terminal (new session), so a prompt can never
        reach whoever runs the tests."""
        if input is None and stdin is None:
            stdin = subprocess.DEVNULL
        return subprocess.run(self.argv(server, command, path=path, key=key,
                                        extra_args=extra_args, user=user),
                              stdin=stdin, input=input, stdout=stdout, stderr=subprocess.PIPE,
                              env=self.env(), timeout=timeout, start_new_session=True)


# ---------------------------------------------------------------------- pty


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _make_controlling_tty() -> None:  # runs in the child, after setsid and the dup2s
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyProcess:
    """A program whose controlling terminal, stdin, stdout and stderr are the slave
    side of a fresh pty; the test talks to the master."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 24,
                 cols: int = 80) -> None:
        self.master, slave = os.openpty()
        set_winsize(slave, rows, cols)
        try:
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                         start_new_session=True,
                                         preexec_fn=_make_controlling_tty,
                                         close_fds=True)
        except BaseException:
            os.close(self.master)
            raise
        finally:
            os.close(slave)
        self.output = bytearray()
        self.pos = 0  # start of the part not yet matched by `expect`

    @property
    def pid(self) -> int:
        return self.proc.pid

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def _read_some(self, wait: float) -> bool:
        """Read what is available within `wait` seconds; False at EOF."""
        ready, _, _ = select.select([self.master], [], [], max(0.0, wait))
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:  # every slave fd closed: the child is gone
                return False
            raise
        if not data:
            return False
        self.output += data
        return True

    def expect(self, pattern: bytes, timeout: float = 15.0) -> re.Match[bytes]:
        """Wait for `pattern` (a regex) in the output after the last match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output, self.pos)
            if match:
                self.pos = match.end()
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not self._read_some(min(remaining, 0.5)):
                match = regex.search(self.output, self.pos)
                if match:
                    self.pos = match.end()
                    return match
                break
        raise AssertionError(
            f"{pattern!r} not seen within {timeout} s; output so far: "
            f"{bytes(self.output[-2000:])!r}")

    def wait(self, timeout: float = 15.0) -> int:
        """Drain the output (so the child never blocks writing) until it exits."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if not self._read_some(0.1):
                break
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        stop_process(self.proc)
        with contextlib.suppress(OSError):
            os.close(self.master)

    def signal(self, signum: int = signal.SIGWINCH) -> None:
        os.kill(self.proc.pid, signum)


# ---------------------------------------------------------------------- asyncio


def run_async(coro: object, timeout: float = 60.0) -> object:
    """asyncio.run with an overall deadline."""
    async def bounded() -> object:
        return await asyncio.wait_for(coro, timeout)  # type: ignore[arg-type]

    return asyncio.run(bounded())


# ---------------------------------------------------------------------- raw HTTP/3


@dataclass
class RawResponse:
    stream_id: int
    headers: list[tuple[bytes, bytes]] | None = None
    body: bytes = b""
    ended: bool = False
    reset: int | None = None  # RESET_STREAM error code

    @property
    def status(self) -> int | None:
        if self.headers is None:
            return None
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers or []:
            if key == name:
                return value
        return None


def _raw_protocol_class() -> type:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.events import (
        ConnectionTerminated,
        StopSendingReceived,
        StreamDataReceived,
        StreamReset,
    )

    class RawH3Protocol(QuicConnectionProtocol):
        """aioquic with an H3Connection, plus streams the test drives byte by byte
        (SSH3 channels), which never reach the HTTP/3 layer."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.h3 = H3Connection(self._quic)
            self.responses: dict[int, RawResponse] = {}
            self.raw: dict[int, RawResponse] = {}  # raw streams: data, FIN, reset
            self.stop_sending: dict[int, int] = {}
            self.terminated: ConnectionTerminated | None = None
            self._changed = asyncio.Event()

        def quic_event_received(self, event: object) -> None:
            sid = getattr(event, "stream_id", None)
            if sid is not None and sid in self.raw:
                state = self.raw[sid]
                if isinstance(event, StreamDataReceived):
                    state.body += event.data
                    state.ended = state.ended or event.end_stream
                elif isinstance(event, StreamReset):
                    state.reset = event.error_code
                elif isinstance(event, StopSendingReceived):
                    self.stop_sending[sid] = event.error_code
            else:
                if isinstance(event, StreamReset) and sid in self.responses:
                    self.responses[sid].reset = event.error_code
                if isinstance(event, StopSendingReceived):
                    self.stop_sending[event.stream_id] = event.error_code
                if isinstance(event, ConnectionTerminated):
                    self.terminated = event
                for h3_event in self.h3.handle_event(event):
                    response = self.responses.get(getattr(h3_event, "stream_id", -1))
                    if response is None:
                        continue
                    if isinstance(h3_event, HeadersReceived):
                        if response.headers is None:
                            response.headers = list(h3_event.headers)
                        response.ended = response.ended or h3_event.stream_ended
                    elif isinstance(h3_event, DataReceived):
                        response.body += h3_event.data
                        response.ended = response.ended or h3_event.stream_ended
            self._changed.set()

        async def wait_until(self, predicate: object, timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while not predicate():  # type: ignore[operator]
                if self.terminated is not None:
                    return bool(predicate())  # type: ignore[operator]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
            return True

        async def request(self, headers: list[tuple[bytes, bytes]], end_stream: bool = False,
                          timeout: float = 10.0) -> RawResponse:
            """Send one request; return once the response ended (or was reset), or
            after `timeout` with whatever arrived."""
            sid = self._quic.get_next_available_stream_id()
            response = self.responses[sid] = RawResponse(sid)
            self.h3.send_headers(sid, headers, end_stream=end_stream)
            self.transmit()
            await self.wait_until(lambda: response.ended or response.reset is not None,
                                  timeout)
            return response

        def open_raw_stream(self, data: bytes, end_stream: bool = False) -> int:
            sid = self._quic.get_next_available_stream_id()
            self.raw[sid] = RawResponse(sid)
            self._quic.send_stream_data(sid, data, end_stream)
            self.transmit()
            return sid

        def send_raw(self, sid: int, data: bytes, end_stream: bool = False) -> None:
            self._quic.send_stream_data(sid, data, end_stream)
            self.transmit()

    return RawH3Protocol


_RAW_PROTOCOL: type | None = None


def raw_h3_protocol() -> type:
    global _RAW_PROTOCOL
    if _RAW_PROTOCOL is None:
        _RAW_PROTOCOL = _raw_protocol_class()
    return _RAW_PROTOCOL


def raw_quic_configuration() -> object:
    import ssl

    from aioquic.quic.configuration import QuicConfiguration

    return QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE,
                             max_datagram_frame_size=65536, idle_timeout=10.0)


def raw_connect(server: Server, configuration: object | None = None, **kwargs: object) -> object:
    """`async with raw_connect(server) as protocol:` an aioquic HTTP/3 connection."""
    from aioquic.asyncio import connect

    return connect(HOST, server.port, configuration=configuration or raw_quic_configuration(),
                   create_protocol=raw_h3_protocol(), **kwargs)


GOOD_USER_AGENT = b"SSH 3.0 test/x 0.1.0 experimental_spec_version=alpha-00"


def connect_headers(server: Server, *, path: str | None = None, protocol: bytes | None = b"ssh3",
                    user_agent: bytes = GOOD_USER_AGENT,
                    authorization: bytes = b"Bearer garbage",
                    user: str = USER) -> list[tuple[bytes, bytes]]:
    headers = [(b":method", b"CONNECT")]
    if protocol is not None:
        headers.append((b":protocol", protocol))
    headers += [
        (b":scheme", b"https"),
        (b":authority", f"{HOST}:{server.port}".encode()),
        (b":path", f"{path or server.url_path}?user={user}".encode()),
        (b"authorization", authorization),
        (b"user-agent", user_agent),
    ]
    return headers


def get_headers(server: Server, path: str) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":scheme", b"https"),
            (b":authority", f"{HOST}:{server.port}".encode()), (b":path", path.encode())]


def _parent_map() -> dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in (b"Z", b"X"):
            parents[int(entry)] = int(fields[1])
    return parents


def child_pids(pid: int) -> list[int]:
    """Live children of `pid`."""
    return [p for p, parent in _parent_map().items() if parent == pid]


def descendant_pids(pid: int) -> list[int]:
    """Live children, grandchildren, ... of `pid`."""
    parents = _parent_map()
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, parent in parents.items() if parent == current]
        found += kids
        frontier += kids
    return found


def wait_for(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():  # type: ignore[operator]
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def library_params(server: Server, key: Path, backend: str) -> object:
    """ssh3.aio.client.ConnectParams for `server`, pinning its certificate."""
    from ssh3.aio.client import ConnectParams, HostKeyError, private_key_identity
    from ssh3.auth.keys import load_private_key

    expected = server.der

    async def pin(der: bytes, chain: list[bytes] | None = None) -> None:
        if der != expected:
            raise HostKeyError("not the test server's certificate")

    identity = private_key_identity(str(key), load_private_key(str(key)))
    return ConnectParams(host=HOST, port=server.port, path=server.url_path, user=USER,
                         identities=[identity], backend=backend, verify_certificate=pin)


async def logs_in(params: object) -> bool:
    """One connection and one login with *params* (library API): True if the server
    accepted it, False if it refused the authentication."""
    from ssh3.aio.client import AuthenticationFailed, establish, open_connection

    async with open_connection(params) as protocol:  # type: ignore[arg-type]
        try:
            await establish(protocol, params)  # type: ignore[arg-type]
        except AuthenticationFailed:
            return False
    return True


async def exec_on(channel: object, command: bytes, eof: bool = True) -> tuple[bytes, bytes, int]:
    """exec `command` on an open session channel (library API); returns
    (stdout, stderr, exit status)."""
    from ssh3.messages import (
        ChannelData,
        ChannelExtendedData,
        ExecRequest,
        ExitSignalRequest,
        ExitStatusRequest,
    )

    channel.send(ExecRequest(command))  # type: ignore[attr-defined]
    if eof:
        channel.send_eof()  # type: ignore[attr-defined]  # nothing on stdin
    out, err = b"", b""
    while True:
        msg = await channel.read()  # type: ignore[attr-defined]
        if msg is None:
            raise AssertionError(f"channel ended without an exit status; got {out!r}")
        if isinstance(msg, ChannelData):
            out += msg.data
        elif isinstance(msg, ChannelExtendedData):
            err += msg.data
        elif isinstance(msg, ExitStatusRequest):
            return out, err, msg.exit_status
        elif isinstance(msg, ExitSignalRequest):
            raise AssertionError(f"killed by SIG{msg.signal_name}")
