"""Relay between an open channel and a TCP connection, for either end of a channel.

The one relay of every TCP forward: -L and SOCKS (client, `ssh3/forward.py`),
direct-tcp (server, `ssh3_server/forwarding.py`) and -R (both sides). The rules are
those of direct-tcp (PROTOCOL.md §3.8): Data messages carry the bytes, a FIN is a
half-close (passed on as `write_eof`), a TCP write failure asks the peer to stop
with STOP_SENDING 42, and other messages are ignored unless a subclass takes them
(`on_message`). Back-pressure comes from `Channel.write` (QUIC send buffer) and
`StreamWriter.drain` (TCP). Subclasses add what differs: when a FIN may follow the
header (`before_fin`) and what a confirmation or failure means.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from ..connection import H3_REQUEST_CANCELLED as CHANNEL_ABORTED
from ..connection import STOP_SENDING_TCP_WRITE_FAILED
from ..messages import ChannelData
from .channel import Channel, ChannelClosed, run_both_ways

log = logging.getLogger("ssh3.aio.tcp_relay")

TCP_READ_SIZE = 64 * 1024


class TcpRelay:
    """Data messages <-> TCP bytes until both directions ended or one side broke."""

    def __init__(self, channel: Channel, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, label: str) -> None:
        self.channel = channel
        self.reader = reader
        self.writer = writer
        self.label = label  # for log lines: "reverse-tcp channel 5 to 127.0.0.1:80"
        self.aborted = False
        self.bytes_in = 0  # channel -> TCP
        self.bytes_out = 0  # TCP -> channel

    # ------------------------------------------------------------ hooks

    def on_message(self, msg: object) -> bool:
        """A message other than Data; False ends the relay (it aborted)."""
        log.info("%s: %s ignored", self.label, type(msg).__name__)
        return True

    def on_channel_closed(self, exc: ChannelClosed) -> None:
        """The channel was reset or stopped under us."""

    def on_peer_eof(self) -> None:
        """The peer's FIN arrived (before it is passed on as our half-close)."""

    async def before_fin(self, sent: bool) -> None:
        """Runs before our FIN; `sent`: whether any data went out before it."""

    async def run(self) -> None:
        try:
            await run_both_ways(self.channel, [self._channel_to_tcp(), self._tcp_to_channel()],
                                self._abort, lambda: self.aborted)
        finally:
            self.close()

    async def _channel_to_tcp(self) -> None:
        while True:
            try:
                msg = await self.channel.read()
            except ChannelClosed as exc:
                self.on_channel_closed(exc)
                self._abort()
                return
            if msg is None:
                self.on_peer_eof()
                # the peer's half-close becomes ours towards the TCP peer
                with contextlib.suppress(OSError):
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                return
            if not isinstance(msg, ChannelData):
                if not self.on_message(msg):
                    return
                continue
            if not msg.data:
                continue
            try:
                data = self.channel.ready_data(msg.data)
                self.writer.writelines(data)
                await self.writer.drain()
            except OSError as exc:
                log.info("%s: TCP write failed: %s", self.label, exc)
                self.channel.protocol.stop_channel(self.channel.channel_id,
                                                   STOP_SENDING_TCP_WRITE_FAILED)
                self._abort()
                return
            self.bytes_in += sum(map(len, data))

    async def _tcp_to_channel(self) -> None:
        while True:
            try:
                data = await self.reader.read(TCP_READ_SIZE)
            except OSError as exc:
                # a reset, not a close: the channel is reset too (finish), not FINned
                log.info("%s: TCP read failed: %s", self.label, exc)
                self._abort()
                return
            if not data:
                await self.before_fin(self.bytes_out > 0)
                send_fin(self.channel)
                return
            try:
                await self.channel.write(data)
            except ChannelClosed:
                self._abort()
                return
            self.bytes_out += len(data)

    def _abort(self) -> None:
        self.aborted = True
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()

    def close(self) -> None:
        if not self.writer.transport.is_closing():
            self.writer.close()


def send_fin(channel: Channel) -> None:
    """FIN our direction unless the stream can no longer take it (the peer reset it or
    asked us to stop sending: QUIC stacks reset the stream on STOP_SENDING). On qh3 the
    FIN rides on an empty Data message (SSH3Connection.send_channel_data)."""
    if channel.eof_sent or channel.error is not None or channel.stop_sending_code is not None:
        return
    try:
        channel.send_eof()
    except Exception:  # noqa: BLE001 - the QUIC library's "stream was reset"
        log.debug("channel %d: FIN not sent (stream already reset)", channel.channel_id)


def finish(channel: Channel) -> None:
    """Let go of a channel: whichever direction is still open is aborted, so that the
    QUIC stream completes on both ends and its stream credit comes back."""
    with contextlib.suppress(Exception):
        if not channel.eof_received and channel.error is None:
            channel.protocol.stop_channel(channel.channel_id, CHANNEL_ABORTED)
        if not channel.eof_sent:
            channel.protocol.reset_channel(channel.channel_id, CHANNEL_ABORTED)
    channel.protocol.forget_channel(channel.channel_id)


def os_reason(exc: BaseException) -> str:
    """The OS's words for a connect, bind or socket failure ("Connection refused"):
    asyncio's own texts ("Connect call failed (...)", "error while attempting to
    bind ...") hide the cause."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0 \
            and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
