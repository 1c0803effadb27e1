"""OpenSSH's escape sequences (`~.`, `~^Z`, `~#`, `~?`, `~~`, `~C`) for interactive
sessions. `EscapeFilter` is the pure byte filter; `EscapeHandler` carries out what
it asks for (terminal modes, suspending, the `~C` command line)."""

from __future__ import annotations

import contextlib
import os
import signal
import termios
import tty
from collections.abc import Awaitable, Callable
from typing import Any

from .terminal import write_all

DEFAULT_ESCAPE = "~"

DISCONNECT = "disconnect"  # ~.
SUSPEND = "suspend"  # ~^Z
LIST = "list"  # ~#
HELP = "help"  # ~?
COMMAND = "command"  # ~C

_ACTIONS = {ord("."): DISCONNECT, 0x1A: SUSPEND, ord("#"): LIST, ord("?"): HELP,
            ord("C"): COMMAND}
# after these the rest of the read is not filtered here: the caller takes it with
# take_rest() once the action is done (the ~C line may already be in it)
_STOPPING = {DISCONNECT, SUSPEND, COMMAND}


def parse_escape_char(text: str | None) -> int | None:
    """`-e` / EscapeChar: a single character, `^X` for a control character, or
    `none` (no escapes). Returns the byte, or None when disabled."""
    if text is None:
        text = DEFAULT_ESCAPE
    if text.lower() == "none":
        return None
    if len(text) == 2 and text[0] == "^" and text[1] != "^":
        return ord(text[1]) & 31
    if len(text) == 1 and ord(text) < 128:
        return ord(text)
    raise ValueError(f"Bad escape character {text!r}.")


def char_name(escape_char: int) -> str:
    return f"^{chr(escape_char | 64)}" if escape_char < 32 else chr(escape_char)


class EscapeFilter:
    """Stdin bytes in, (bytes for the server, actions) out. An escape is recognised
    only right after `\\r` or `\\n` (or at the session's start), as in OpenSSH; the
    escape character may come in one read and its command in the next."""

    def __init__(self, escape_char: int | None = ord(DEFAULT_ESCAPE)) -> None:
        self.escape_char = escape_char
        self.at_line_start = True
        self.pending = False  # the escape character was seen, its command not yet
        self._rest = b""

    def feed(self, data: bytes) -> tuple[bytes, list[str]]:
        esc = self.escape_char
        if esc is None:
            return data, []
        out = bytearray()
        actions: list[str] = []
        for i, ch in enumerate(data):
            if self.pending:
                self.pending = False
                action = _ACTIONS.get(ch)
                if action is not None:
                    actions.append(action)  # still at a line start (OpenSSH's too)
                    if action in _STOPPING:
                        self._rest = data[i + 1:]
                        break
                    continue
                if ch != esc:  # `~x`: both go through; `~~`: one
                    out.append(esc)
            elif self.at_line_start and ch == esc:
                self.pending = True
                continue
            self.at_line_start = ch in (0x0D, 0x0A)
            out.append(ch)
        return bytes(out), actions

    def take_rest(self) -> bytes:
        """What followed a stopping action (~. ~^Z ~C) in the same read."""
        rest, self._rest = self._rest, b""
        return rest


def help_text(escape_char: int) -> str:
    e = char_name(escape_char)
    return (f"{e}?\r\nSupported escape sequences:\r\n"
            f" {e}.   - terminate connection\r\n"
            f" {e}C   - open a command line\r\n"
            f" {e}^Z  - suspend ssh3\r\n"
            f" {e}#   - list forwarded connections\r\n"
            f" {e}?   - this message\r\n"
            f" {e}{e}   - send the escape character by typing it twice\r\n"
            "(Note that escapes are only recognized immediately after newline.)\r\n")


COMMAND_HELP = ("Commands:\r\n"
                "      -L[bind_address:]port:host:hostport    Request local forward\r\n"
                "      -D[bind_address:]port                  Request dynamic forward\r\n"
                "      -KL[bind_address:]port                 Cancel local forward\r\n"
                "      -KD[bind_address:]port                 Cancel dynamic forward\r\n"
                "      help                                   This help\r\n")

PROMPT = "ssh3> "


class EscapeHandler:
    """Carries out the filter's actions for run_session. `cooked` is the terminal
    mode from before raw mode; `read` gives the next stdin chunk (b"" at EOF)."""

    def __init__(self, fd: int, out_fd: int, escape_char: int, cooked: list[Any] | None,
                 read: Callable[[], Awaitable[bytes]], forwarding: Any = None,
                 dynamic: Any = None, on_resume: Callable[[], None] | None = None) -> None:
        self.fd = fd
        self.out_fd = out_fd
        self.escape_char = escape_char
        self.cooked = cooked
        self.read = read
        self.forwarding = forwarding
        self.dynamic = dynamic
        self.on_resume = on_resume

    def say(self, text: str) -> None:
        with contextlib.suppress(OSError):
            write_all(self.out_fd, text.encode())

    def _cooked(self, isig: bool = True) -> None:
        if self.cooked is None:
            return
        mode = list(self.cooked)
        if not isig:
            mode[3] &= ~termios.ISIG  # ^C ends the command line, not the client
        with contextlib.suppress(termios.error):
            termios.tcsetattr(self.fd, termios.TCSADRAIN, mode)

    def _raw(self) -> None:
        if self.cooked is not None:
            with contextlib.suppress(termios.error):
                tty.setraw(self.fd, termios.TCSADRAIN)

    def help(self) -> None:
        self.say(help_text(self.escape_char))

    def suspend(self) -> None:
        self.say(f"{char_name(self.escape_char)}^Z [suspend ssh3]\r\n")
        self._cooked()
        try:
            os.kill(os.getpid(), signal.SIGTSTP)  # stops here until SIGCONT
        finally:
            self._raw()
        if self.on_resume is not None:
            self.on_resume()

    def list_connections(self) -> None:
        lines = ["\r\nThe following connections are open:\r\n",
                 "  #0 client-session (interactive session)\r\n"]
        n = 1
        for owner, flag in ((self.forwarding, "-L"), (self.dynamic, "-D")):
            for forwarder in getattr(owner, "forwarders", None) or []:
                spec = forwarder.spec
                if flag == "-L" and getattr(spec, "protocol", "tcp") == "udp":
                    flag_text = "-forward-udp"
                else:
                    flag_text = flag
                active = len(getattr(forwarder, "_connections", None)
                             or getattr(forwarder, "flows", None) or ())
                lines.append(f"  #{n} {flag_text} {spec.text} "
                             f"({active} active connection{'s' if active != 1 else ''})\r\n")
                n += 1
        if n == 1:
            configured = [s.text for owner in (self.forwarding, self.dynamic)
                          for s in getattr(owner, "specs", None) or []]
            lines.append("  (no forwarding listeners" +
                         (f"; configured: {', '.join(configured)}" if configured else "") +
                         ")\r\n")
        self.say("".join(lines))

    async def command_line(self, pending: bytes) -> bytes | None:
        """`~C`: read one line in cooked mode and run it. Returns what was typed after
        the line (for the filter), or None at EOF."""
        self.say(f"{char_name(self.escape_char)}C\r\n{PROMPT}")
        self._cooked(isig=False)
        buf = bytearray(pending)
        eof = False
        try:
            while not any(c in buf for c in (0x0A, 0x0D)):
                data = await self.read()
                if not data:
                    eof = True
                    break
                buf += data
        finally:
            self._raw()
        ends = [i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0]
        end = min(ends) if ends else len(buf)
        line = bytes(buf[:end]).decode(errors="replace")
        rest = bytes(buf[end + 1:])
        if rest[:1] == b"\n" and buf[end:end + 1] == b"\r":
            rest = rest[1:]
        if "\x03" not in line:
            await self.run_command(line.strip())
        return None if eof else rest

    async def run_command(self, line: str) -> None:
        from .forwarding import ForwardError

        if not line:
            return
        if line in ("help", "?", "-h"):
            self.say(COMMAND_HELP)
            return
        try:
            if line.startswith("-KL"):
                await self._cancel(self.forwarding, line[3:].strip())
            elif line.startswith("-KD"):
                await self._cancel(self.dynamic, line[3:].strip())
            elif line.startswith("-L"):
                await self._add_local(line[2:].strip())
            elif line.startswith("-D"):
                await self._add_dynamic(line[2:].strip())
            else:
                self.say("Invalid command.\r\n" + COMMAND_HELP)
        except ForwardError as exc:
            self.say(f"{exc}\r\n")

    async def _add_local(self, text: str) -> None:
        from .forwarding import ForwardError, TcpForwarder, parse_local_forward, resolve

        if self.forwarding is None:
            raise ForwardError("forwarding is not available in this session")
        spec = parse_local_forward(text)
        forwarder = TcpForwarder(self.forwarding.conv, spec, await resolve(spec),
                                 self._report)
        await forwarder.start()
        self.forwarding.forwarders.append(forwarder)
        self._keep_alive(self.forwarding, "_keepalive_task")
        self.say(f"Forwarding port {spec.listen_port}.\r\n")

    async def _add_dynamic(self, text: str) -> None:
        from .forwarding import ForwardError
        from .socks import SocksForwarder, parse_dynamic_forward

        if self.dynamic is None:
            raise ForwardError("dynamic forwarding is not available in this session")
        spec = parse_dynamic_forward(text)
        forwarder = SocksForwarder(self.dynamic.conv, spec, self._report)
        await forwarder.start()
        self.dynamic.forwarders.append(forwarder)
        self._keep_alive(self.dynamic, "_keepalive")
        self.say(f"Forwarding port {spec.listen_port}.\r\n")

    @staticmethod
    def _keep_alive(owner: Any, attr: str) -> None:
        """The keep-alive of the forwarding context only runs if it had forwards at
        the start: a forward added at run time needs it too."""
        if getattr(owner, attr, "absent") is None and getattr(owner, "keepalive", 1) > 0:
            import asyncio  # not at import: `ssh3 -G` parses -e without an event loop

            setattr(owner, attr, asyncio.ensure_future(owner._keep_alive()))

    async def _cancel(self, owner: Any, text: str) -> None:
        from .forwarding import ForwardError

        host, _, port_text = text.rpartition(":")
        try:
            port = int(port_text)
        except ValueError:
            raise ForwardError(f"Bad forwarding close port {text!r}") from None
        for forwarder in list(getattr(owner, "forwarders", None) or []):
            spec = forwarder.spec
            if spec.listen_port == port and (not host or host == (spec.listen_host or "*")):
                await forwarder.close()
                owner.forwarders.remove(forwarder)
                self.say("Canceled forwarding.\r\n")
                return
        raise ForwardError("Unknown port forwarding.")

    def _report(self, text: str) -> None:
        self.say(f"ssh3: {text}\r\n")
