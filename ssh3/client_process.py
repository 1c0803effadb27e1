"""A remote process on a session channel, in the shape of asyncssh's SSHClientProcess:
`stdin` (write/drain/write_eof), `stdout`/`stderr` (read/readline/async iteration),
`wait()`, `send_signal`, `change_terminal_size`.

Output is read from the channel only while the stream's buffer has room, so a caller
that does not read stops the remote side through QUIC flow control instead of
filling our memory.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import io
import logging
import signal as _signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, Any

from .aio.channel import Channel, ChannelClosed
from .aio.conversation import Conversation
from .connection import EXT_CHANNEL_EOF, EXT_WINDOW_CHANGE
from .connection import H3_REQUEST_CANCELLED as CHANNEL_ABORTED
from .messages import (
    ChannelData,
    ChannelExtendedData,
    ChannelOpenFailure,
    ExitSignalRequest,
    ExitStatusRequest,
    SignalRequest,
    WindowChangeRequest,
)

log = logging.getLogger("ssh3.client")

STREAM_LIMIT = 1 << 20  # bytes buffered per output stream before we stop reading
STDIN_CHUNK = 64 * 1024
# code for a channel given up while its process runs (H3_REQUEST_CANCELLED)


class ChannelOpenError(Exception):
    """The server refused a channel (ChannelOpenFailure): a session, or a
    direct-tcp connection it could not make or was not allowed to."""

    def __init__(self, reason_code: int, message: str) -> None:
        super().__init__(f"the server refused the channel: {message} (reason {reason_code})")
        self.reason_code = reason_code
        self.message = message


class ProcessError(Exception):
    """`run(..., check=True)` (or `wait(check=True)`) of a command that did not exit
    with status 0; `result` is its CompletedProcess."""

    def __init__(self, result: CompletedProcess) -> None:
        err = result.stderr
        text = err.decode("utf-8", "replace") if isinstance(err, bytes) else err
        super().__init__(f"{result.command!r} exited with status {result.returncode}: "
                         f"{text[-500:]}")
        self.result = result


@dataclass
class CompletedProcess:
    """What `run` and `wait` return. `stdout`/`stderr` are str when the process was
    created with an encoding (the default, UTF-8), bytes with `encoding=None`; they
    hold only output the caller had not read (or redirected) already."""

    command: str | None
    exit_status: int | None  # None when the process died by a signal (or no status came)
    exit_signal: str | None  # e.g. "TERM"
    stdout: Any
    stderr: Any

    @property
    def returncode(self) -> int:
        """The exit status, 128+N for signal N, 255 if neither came back."""
        if self.exit_status is not None:
            return self.exit_status
        if self.exit_signal is not None:
            try:
                return 128 + int(_signal.Signals["SIG" + self.exit_signal])
            except KeyError:
                pass
        return 255


class ProcessReader:
    """The remote stdout or stderr: bytes, or str when an encoding is set."""

    def __init__(self, encoding: str | None, errors: str, limit: int = STREAM_LIMIT) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._limit = limit
        self._draining = False  # a reader wants more than the limit: do not stop
        self._decoder = codecs.getincrementaldecoder(encoding)(errors) if encoding else None

    # -------------------------------------------------- fed by the process's pump

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        self._changed.set()
        if len(self._buffer) >= self._limit and not self._draining:
            self._room.clear()

    def _feed_eof(self) -> None:
        self._eof = True
        self._changed.set()
        self._room.set()

    async def _wait_room(self) -> None:
        await self._room.wait()

    # -------------------------------------------------- reading

    def at_eof(self) -> bool:
        return self._eof and not self._buffer

    def _take(self, count: int) -> Any:
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        if len(self._buffer) < self._limit:
            self._room.set()
        if self._decoder is None:
            return data
        return self._decoder.decode(data, final=self._eof and not self._buffer)

    async def _wait_data(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def _wait_unbounded(self) -> None:
        self._draining = True
        self._room.set()
        try:
            await self._wait_data()
        finally:
            self._draining = False

    async def read(self, n: int = -1) -> Any:
        """Up to `n` bytes as soon as some are there; everything to EOF when n < 0.
        Empty at EOF."""
        if n < 0:
            while not self._eof:
                await self._wait_unbounded()
            return self._take(len(self._buffer))
        while not self._buffer and not self._eof:
            await self._wait_data()
        return self._take(n)

    async def readline(self) -> Any:
        """One line with its newline; the rest at EOF; empty after it."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                return self._take(end + 1)
            if self._eof:
                return self._take(len(self._buffer))
            await self._wait_unbounded()  # a line longer than the limit must fit

    async def readexactly(self, n: int) -> Any:
        while len(self._buffer) < n:
            if self._eof:
                raise asyncio.IncompleteReadError(bytes(self._buffer), n)
            await self._wait_unbounded()
        return self._take(n)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[Any]:
        while line := await self.readline():
            yield line


class ProcessWriter:
    """The remote stdin."""

    def __init__(self, process: SSH3ClientProcess) -> None:
        self._process = process
        self._channel = process.channel

    def write(self, data: bytes | str) -> None:
        """Queue `data` (str is encoded with the process's encoding); `drain` waits."""
        raw = data.encode(self._process.encoding or "utf-8") if isinstance(data, str) else data
        # 16 bytes cover a Data message's type and length fields
        size = max(1, min(STDIN_CHUNK, self._channel.max_packet_size - 16))
        for start in range(0, len(raw), size):
            self._channel.send(ChannelData(bytes(raw[start:start + size])))

    def writelines(self, lines: list[bytes | str]) -> None:
        for line in lines:
            self.write(line)

    async def drain(self) -> None:
        await self._channel.drain()

    def can_write_eof(self) -> bool:
        """Only a server that announced EXT_CHANNEL_EOF takes a FIN as stdin EOF; the
        reference would end the whole conversation (PROTOCOL.md §6.4)."""
        return bool(self._process.conversation.peer_extensions & EXT_CHANNEL_EOF)

    def write_eof(self) -> None:
        """End stdin. Towards a server that cannot take it, nothing is sent (logged)."""
        if not self.can_write_eof():
            log.debug("stdin EOF not sent: the server does not take a FIN as EOF")
            return
        with contextlib.suppress(ChannelClosed):
            self._channel.send_eof()

    def close(self) -> None:
        self.write_eof()


Target = IO[bytes] | IO[str] | None


def _binary(target: Any) -> Any:
    # a text file (sys.stdout) is written through its byte buffer
    if isinstance(target, io.TextIOBase) and hasattr(target, "buffer"):
        return target.buffer
    return target


class SSH3ClientProcess:
    """A command (or shell) running on the server. Use `async with` or call
    `close()`: it frees the channel (and aborts the process if it still runs)."""

    def __init__(self, conversation: Conversation, channel: Channel, command: str | None,
                 encoding: str | None = "utf-8", errors: str = "strict",
                 stdout: Target = None, stderr: Target = None) -> None:
        self.conversation = conversation
        self.channel = channel
        self.command = command
        self.encoding = encoding
        self.stdin = ProcessWriter(self)
        self.stdout = ProcessReader(encoding, errors)
        self.stderr = ProcessReader(encoding, errors)
        self._targets = {1: _binary(stdout), 2: _binary(stderr)}
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.open_error: ChannelOpenError | None = None
        self._exited = asyncio.Event()
        self._closed = False
        self._pump = asyncio.ensure_future(self._read_channel())
        self._stdin_task: asyncio.Task[None] | None = None

    @property
    def returncode(self) -> int | None:
        """None while running; else as CompletedProcess.returncode."""
        if not self._exited.is_set():
            return None
        return CompletedProcess(None, self.exit_status, self.exit_signal, b"", b"").returncode

    def _feed_stdin_from(self, source: Any) -> None:
        """`stdin=` given to create_process: bytes/str, or a binary file to copy."""
        if isinstance(source, bytes | bytearray | str):
            self.stdin.write(bytes(source) if not isinstance(source, str) else source)
            self.stdin.write_eof()
            return

        async def copy() -> None:
            while chunk := source.read(STDIN_CHUNK):
                self.stdin.write(chunk)
                await self.stdin.drain()
            self.stdin.write_eof()

        self._stdin_task = asyncio.ensure_future(copy())

    async def _deliver(self, fd: int, data: bytes) -> None:
        target = self._targets[fd]
        if target is not None:
            target.write(data)
            return
        stream = self.stdout if fd == 1 else self.stderr
        await stream._wait_room()
        stream._feed(data)

    async def _read_channel(self) -> None:
        try:
            while True:
                msg = await self.channel.read()
                if msg is None:
                    break
                if isinstance(msg, ChannelData):
                    await self._deliver(1, msg.data)
                elif isinstance(msg, ChannelExtendedData) and msg.data_type == 1:
                    await self._deliver(2, msg.data)
                elif isinstance(msg, ExitStatusRequest):
                    self.exit_status = msg.exit_status
                    break
                elif isinstance(msg, ExitSignalRequest):
                    self.exit_signal = msg.signal_name
                    break
                elif isinstance(msg, ChannelOpenFailure):
                    self.open_error = ChannelOpenError(msg.reason_code, msg.message)
                    break
        except ChannelClosed as exc:
            log.debug("session channel %d ended: %s", self.channel.channel_id, exc)
        finally:
            self.stdout._feed_eof()
            self.stderr._feed_eof()
            self._exited.set()

    async def wait(self, check: bool = False, timeout: float | None = None) -> CompletedProcess:
        """Wait for the exit; the result carries the output not read yet. Raises
        ChannelOpenError if the server refused the session, ProcessError with
        `check=True` on a non-zero exit, TimeoutError after `timeout` seconds."""

        async def collect() -> CompletedProcess:
            out, err = await asyncio.gather(self.stdout.read(), self.stderr.read())
            await self._exited.wait()
            return CompletedProcess(self.command, self.exit_status, self.exit_signal, out, err)

        result = await asyncio.wait_for(collect(), timeout)
        if self.open_error is not None:
            raise self.open_error
        if check and result.returncode != 0:
            raise ProcessError(result)
        return result

    def change_terminal_size(self, width: int, height: int, pixwidth: int = 0,
                             pixheight: int = 0) -> None:
        """Tell the pty its new size. A server that did not announce window-change
        support (the reference would end the conversation, Q2) is not told."""
        if not self.conversation.peer_extensions & EXT_WINDOW_CHANGE:
            log.debug("window-change not sent: the server does not announce it")
            return
        self.channel.send(WindowChangeRequest(width, height, pixwidth, pixheight))

    def send_signal(self, signal: str | int) -> None:
        """Deliver a signal ("TERM", "SIGTERM" or signal.SIGTERM) to the process."""
        if isinstance(signal, int):
            name = _signal.Signals(signal).name
        else:
            name = signal.upper()
        self.channel.send(SignalRequest(name.removeprefix("SIG")))

    def terminate(self) -> None:
        self.send_signal("TERM")

    def kill(self) -> None:
        self.send_signal("KILL")

    def close(self) -> None:
        """Let the channel go: FIN it when the process is over (a server with
        EXT_CHANNEL_EOF then frees it), abort it while the process still runs."""
        if self._closed:
            return
        self._closed = True
        if self._stdin_task is not None:
            self._stdin_task.cancel()
        channel = self.channel
        if not self._exited.is_set():
            with contextlib.suppress(Exception):
                channel.abort(CHANNEL_ABORTED)
        elif self.stdin.can_write_eof() and channel.error is None:
            with contextlib.suppress(Exception):
                channel.send_eof()
        self._pump.cancel()

    async def wait_closed(self) -> None:
        tasks = [t for t in (self._pump, self._stdin_task) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        self.channel.protocol.forget_channel(self.channel.channel_id)

    async def __aenter__(self) -> SSH3ClientProcess:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()
