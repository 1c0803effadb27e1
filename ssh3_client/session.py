"""Running a command or shell on a conversation, wired to the local stdio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import termios
from dataclasses import dataclass, field
from typing import Any

from ssh3.aio.channel import Channel, ChannelClosed
from ssh3.aio.conversation import Conversation
from ssh3.connection import EXT_CHANNEL_EOF, EXT_ENV, EXT_WINDOW_CHANGE
from ssh3.messages import (
    FORWARD_AGENT_DATA,
    ChannelData,
    ChannelExtendedData,
    ChannelOpenConfirmation,
    ChannelOpenFailure,
    EnvRequest,
    ExecRequest,
    ExitSignalRequest,
    ExitStatusRequest,
    PtyRequest,
    ShellRequest,
    SubsystemRequest,
    WindowChangeRequest,
)

from .escape import COMMAND, DISCONNECT, HELP, LIST, SUSPEND, EscapeFilter, EscapeHandler
from .terminal import StdinReader, raw_mode, terminal_size, write_all

log = logging.getLogger("ssh3.client")

EXIT_ERROR = 255


@dataclass
class SessionRequest:
    command: bytes | None  # None: interactive shell
    pty: bool
    term: str = ""
    # -A: the first message is Data `forward-agent`, before pty-req/shell/exec (§3.7)
    forward_agent: bool = False
    # -s: `command` is a subsystem name (sftp); a reference server ends the
    # conversation on it (Q3), so an end without exit status is reported as a refusal
    subsystem: bool = False
    # escape sequences (~. ~C ...): the byte of the escape character, None for none;
    # only active with a pty and a terminal on stdin (OpenSSH's rule)
    escape_char: int | None = None
    host: str = ""  # for "Connection to HOST closed." after ~.
    quiet: bool = False
    # SendEnv/SetEnv (ssh3_client/environment.py): `env` requests, only with EXT_ENV
    env: list[tuple[str, bytes]] = field(default_factory=list)


def _signal_number(name: str) -> int | None:
    try:
        return int(signal.Signals["SIG" + name])
    except KeyError:
        return None


def open_session(conv: Conversation, request: SessionRequest, stdin_fd: int = 0) -> Channel:
    """Open the session channel and queue its requests (no waiting: this also runs
    right behind the CONNECT, before its answer, with EXT_EARLY_CHANNELS)."""
    extensions = conv.peer_extensions
    channel = conv.open_channel("session")
    size = terminal_size(stdin_fd) if request.pty else None
    if request.forward_agent:
        channel.send(ChannelData(FORWARD_AGENT_DATA))
    if request.env:
        if extensions & EXT_ENV:
            for name, value in request.env:
                channel.send(EnvRequest(name, value))
        else:
            log.debug("server did not announce the env extension: SendEnv/SetEnv (%s) "
                      "not sent", ", ".join(name for name, _ in request.env))
    if request.pty:
        columns, rows = size or (80, 24)
        channel.send(PtyRequest(request.term, columns, rows, 0, 0, b"", want_reply=True))
    if request.command is None:
        channel.send(ShellRequest(want_reply=True))
    elif request.subsystem:
        channel.send(SubsystemRequest(os.fsdecode(request.command), want_reply=True))
    else:
        channel.send(ExecRequest(request.command, want_reply=True))
    return channel


async def run_session(conv: Conversation, request: SessionRequest, stdin_fd: int = 0,
                      stdout_fd: int = 1, stderr_fd: int = 2, forwarding: Any = None,
                      dynamic: Any = None, channel: Channel | None = None,
                      stdin_reader: Any = None, on_resize: Any = None) -> int:
    """Run one session to its end and return the exit code the program should use.

    `channel`: the session channel `open_session` opened already (early).
    `stdin_reader` replaces the StdinReader of `stdin_fd` (the mux master reads a
    client's fd without a thread that could outlive the session); `on_resize`,
    if given, is called with the window-change function instead of catching
    SIGWINCH here (the mux client relays its SIGWINCH)."""
    loop = asyncio.get_running_loop()
    extensions = conv.peer_extensions
    if channel is None:
        channel = open_session(conv, request, stdin_fd)
    size = terminal_size(stdin_fd) if request.pty else None

    stdin = stdin_reader if stdin_reader is not None else StdinReader(stdin_fd, loop)
    stdin.start()
    tty_in = request.pty and os.isatty(stdin_fd)
    cooked = None
    if tty_in:
        with contextlib.suppress(termios.error):
            cooked = termios.tcgetattr(stdin_fd)
    escape_char = request.escape_char if tty_in else None
    escapes = EscapeFilter(escape_char)
    disconnected: asyncio.Future[None] = loop.create_future()

    def on_winch() -> None:
        new = terminal_size(stdin_fd)
        if new is not None:
            with contextlib.suppress(ChannelClosed):
                channel.send(WindowChangeRequest(new[0], new[1], 0, 0))

    handler = EscapeHandler(stdin_fd, stderr_fd, escape_char or 0, cooked, stdin.read,
                            forwarding, dynamic, on_resume=lambda: winch and on_winch())

    async def pump_stdin() -> None:
        while True:
            data: bytes | None = await stdin.read()
            if not data:
                # only a server that announced it takes a FIN as stdin EOF; the
                # reference would end the whole conversation (§6.4)
                if extensions & EXT_CHANNEL_EOF:
                    channel.send_eof()
                return
            while data:
                out, actions = escapes.feed(data)
                data = escapes.take_rest()
                if out:
                    await channel.write(out)
                for action in actions:
                    if action == DISCONNECT:
                        if not disconnected.done():
                            disconnected.set_result(None)
                        return
                    if action == HELP:
                        handler.help()
                    elif action == LIST:
                        handler.list_connections()
                    elif action == SUSPEND:
                        handler.suspend()
                    elif action == COMMAND:
                        data = await handler.command_line(data)
                        if data is None:  # EOF while reading the command line
                            if extensions & EXT_CHANNEL_EOF:
                                channel.send_eof()
                            return

    stdin_task = asyncio.ensure_future(pump_stdin())
    winch = request.pty and size is not None and bool(extensions & EXT_WINDOW_CHANGE)
    if winch and on_resize is not None:
        on_resize(on_winch)
    elif winch:
        loop.add_signal_handler(signal.SIGWINCH, on_winch)
    raw = raw_mode(stdin_fd) if request.pty and os.isatty(stdin_fd) else contextlib.nullcontext()
    output: asyncio.Future[int] | None = None
    try:
        with raw:
            output = asyncio.ensure_future(_read_output(
                channel, stdout_fd, stderr_fd,
                os.fsdecode(request.command or b"") if request.subsystem else None))
            await asyncio.wait({output, disconnected}, return_when=asyncio.FIRST_COMPLETED)
            if not output.done():  # ~.: leave now, the connection closes behind us
                output.cancel()
                with contextlib.suppress(BaseException):
                    await output
        if output.cancelled():
            if not request.quiet:
                with contextlib.suppress(OSError):
                    write_all(stderr_fd, f"Connection to {request.host or 'server'} "
                              "closed.\r\n".encode())
            return EXIT_ERROR
        code = output.result()
        # both directions done: a server that takes FIN as EOF can free the channel
        # (never towards the reference, which would end the conversation)
        if extensions & EXT_CHANNEL_EOF and not channel.error:
            channel.send_eof()
        return code
    finally:
        if output is not None:
            output.cancel()
        if winch and on_resize is not None:
            on_resize(None)
        elif winch:
            loop.remove_signal_handler(signal.SIGWINCH)
        stdin_task.cancel()
        with contextlib.suppress(BaseException):
            await stdin_task


async def _read_output(channel: object, stdout_fd: int, stderr_fd: int,
                       subsystem: str | None = None) -> int:
    while True:
        try:
            msg = await channel.read()  # type: ignore[attr-defined]
        except ChannelClosed as exc:
            _error(f"subsystem {subsystem!r} refused: {exc}" if subsystem is not None
                   else f"session ended without an exit status: {exc}", stderr_fd)
            return EXIT_ERROR
        if msg is None:
            _error(f"subsystem {subsystem!r} refused: the server closed the session"
                   if subsystem is not None
                   else "the server closed the session without an exit status", stderr_fd)
            return EXIT_ERROR
        if isinstance(msg, ChannelData):
            write_all(stdout_fd, msg.data)
        elif isinstance(msg, ChannelExtendedData):
            if msg.data_type == 1:
                write_all(stderr_fd, msg.data)
        elif isinstance(msg, ExitStatusRequest):
            return msg.exit_status & 0xFF
        elif isinstance(msg, ExitSignalRequest):
            signum = _signal_number(msg.signal_name)
            log.debug("remote process killed by SIG%s%s", msg.signal_name,
                      " (core dumped)" if msg.core_dumped else "")
            return 128 + signum if signum is not None else EXIT_ERROR
        elif isinstance(msg, ChannelOpenFailure):
            _error(f"the server refused the session: {msg.message} (reason {msg.reason_code})",
                   stderr_fd)
            return EXIT_ERROR
        elif isinstance(msg, ChannelOpenConfirmation):
            continue
        else:
            log.debug("ignoring %s on the session channel", type(msg).__name__)


def _error(text: str, fd: int = 2) -> None:
    # to the session's stderr: a mux master's own stderr is not the user's
    with contextlib.suppress(OSError):
        if fd == 2:
            sys.stderr.flush()
        write_all(fd, f"ssh3: {text}\n".encode())
