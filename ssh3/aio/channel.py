"""An SSH3 channel as an asyncio object: read messages, write with back-pressure."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..messages import ChannelData, ChannelExtendedData, ChannelHeader, Message

if TYPE_CHECKING:
    from .protocol import SSH3Protocol

DEFAULT_MAX_PACKET_SIZE = 30000
# a writer waits while more than this many bytes are queued but unacknowledged
SEND_HIGH_WATER = 1 << 20


class ChannelClosed(Exception):
    """The channel was reset, hit a protocol error, or its connection went away."""


class Channel:
    def __init__(self, protocol: SSH3Protocol, channel_id: int, header: ChannelHeader,
                 *, local: bool) -> None:
        self.protocol = protocol
        self.channel_id = channel_id
        self.header = header
        self.local = local
        self.control_stream_id = header.control_stream_id
        self.channel_type = header.channel_type
        # the acceptor chunks by the opener's MPS; the opener uses its own (§3.4)
        self.max_packet_size = header.max_packet_size or DEFAULT_MAX_PACKET_SIZE
        self._queue: deque[tuple[Message, int]] = deque()
        self._readable = asyncio.Event()
        self._eof_received = False
        self._error: str | None = None
        self.eof_sent = False
        self.stop_sending_code: int | None = None
        self.closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Channel {self.channel_id} {self.channel_type}>"

    # ---------------------------------------------------------- receive side

    def _feed(self, message: Message, size: int) -> None:
        self._queue.append((message, size))
        self._readable.set()

    def _feed_eof(self) -> None:
        self._eof_received = True
        self._readable.set()

    def _feed_error(self, error: str) -> None:
        if self._error is None:
            self._error = error
        self._readable.set()
        self.closed.set()

    @property
    def eof_received(self) -> bool:
        return self._eof_received

    @property
    def error(self) -> str | None:
        return self._error

    async def read(self) -> Message | None:
        """Next message; None at EOF (the peer FINned); raises ChannelClosed on errors.
        Empty Data messages are skipped: they carry nothing, and our peers on qh3 send
        their FIN on one (docs/extensions.md)."""
        while True:
            while not self._queue:
                if self._error is not None:
                    raise ChannelClosed(self._error)
                if self._eof_received:
                    return None
                self._readable.clear()
                await self._readable.wait()
            message, size = self._queue.popleft()
            if size:
                self.protocol.consume(self.channel_id, size)
            if not (isinstance(message, ChannelData) and not message.data):
                return message

    def ready_data(self, first: bytes) -> list[bytes]:
        """`first` plus the payloads of the Data messages already queued behind it
        (consumed here), so that a relay writes a burst of messages to its socket in
        one call instead of one system call each. Stops at anything else."""
        parts = [first]
        queue = self._queue
        consumed = 0
        while queue and type(queue[0][0]) is ChannelData:
            message, size = queue.popleft()
            consumed += size
            if message.data:  # type: ignore[attr-defined]
                parts.append(message.data)  # type: ignore[attr-defined]
        if consumed:
            self.protocol.consume(self.channel_id, consumed)
        return parts

    # ---------------------------------------------------------- send side

    def send(self, message: Message) -> None:
        """Queue one message now (small control messages; no waiting)."""
        self._check_writable()
        self.protocol.send_channel_bytes(self.channel_id, message.encode())

    async def drain(self) -> None:
        await self.protocol.wait_writable(self.channel_id, SEND_HIGH_WATER)
        self._check_writable()

    async def write(self, data: bytes, data_type: int | None = None) -> None:
        """Send bytes as Data (or ExtendedData of `data_type`), chunked by the MPS."""
        empty = (ChannelData(b"") if data_type is None
                 else ChannelExtendedData(data_type, b""))
        chunk = max(1, self.max_packet_size - len(empty.encode()))
        view = memoryview(data)
        for start in range(0, len(view), chunk):
            part = bytes(view[start:start + chunk])
            msg = ChannelData(part) if data_type is None else ChannelExtendedData(data_type, part)
            self.send(msg)
            await self.drain()

    def send_eof(self) -> None:
        """FIN our direction. Mind Q7 before doing this towards a reference peer.
        With qh3 towards a peer of ours the FIN rides on an empty Data message
        (SSH3Connection.send_channel_data)."""
        if not self.eof_sent and self._error is None:
            self.eof_sent = True
            self.protocol.send_channel_bytes(self.channel_id, b"", end_stream=True)

    def reset(self, error_code: int) -> None:
        self.protocol.reset_channel(self.channel_id, error_code)
        self._feed_error(f"reset locally with code {error_code:#x}")

    def abort(self, error_code: int) -> None:
        """Reset our direction and ask the peer to stop sending."""
        self.protocol.stop_channel(self.channel_id, error_code)
        self.reset(error_code)

    def _check_writable(self) -> None:
        if self._error is not None:
            raise ChannelClosed(self._error)
        if self.stop_sending_code is not None:
            raise ChannelClosed(f"peer asked to stop sending ({self.stop_sending_code:#x})")


async def run_both_ways(channel: Channel, directions: list[Coroutine[Any, Any, None]],
                        abort: Callable[[], None], aborted: Callable[[], bool]) -> None:
    """Run a relay's directions until both have ended (half-close lets one end long
    before the other), `aborted()` turns true, or the channel breaks — a reset that
    arrives after our EOF is seen by no reader, so the channel's `closed` is watched
    too (then `abort()` is called). Exceptions of a direction propagate."""
    tasks = {asyncio.ensure_future(d) for d in directions}
    broken = asyncio.ensure_future(channel.closed.wait())
    try:
        while tasks and not aborted():
            done, _ = await asyncio.wait(tasks | {broken}, return_when=asyncio.FIRST_COMPLETED)
            if broken in done:
                abort()
                return
            tasks -= done
            for task in done:
                task.result()
    finally:
        for task in (*tasks, broken):
            task.cancel()
        await asyncio.gather(*tasks, broken, return_exceptions=True)


async def run_until_first_ends(directions: list[Coroutine[Any, Any, None]]) -> None:
    """Run a relay's directions until the first ends (a request/reply relay such as
    an agent connection is over once either side is), then cancel the rest.
    Exceptions of the one that ended propagate."""
    tasks = {asyncio.ensure_future(d) for d in directions}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
