"""Relay between an open channel and a TCP connection, for either end of a channel.

Used by remote forwarding (-R) on both sides: the server relays the connection its
listener accepted, the client the one it made to the forward's target. The rules are
those of direct-tcp (PROTOCOL.md §3.8): Data messages carry the bytes, a FIN is a
half-close (passed on as `write_eof`), a TCP write failure asks the peer to stop
with STOP_SENDING 42, and other messages are ignored. Back-pressure comes from
`Channel.write` (QUIC send buffer) and `StreamWriter.drain` (TCP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..connection import STOP_SENDING_TCP_WRITE_FAILED
from ..messages import ChannelData
from .channel import Channel, ChannelClosed, run_both_ways

log = logging.getLogger("ssh3.aio.tcp_relay")

TCP_READ_SIZE = 64 * 1024
# a channel we give up on is reset / stopped with H3_REQUEST_CANCELLED
CHANNEL_ABORTED = 0x10C


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
            except ChannelClosed:
                self._abort()
                return
            if msg is None:
                # the peer's half-close becomes ours towards the TCP peer
                with contextlib.suppress(OSError):
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                return
            if not isinstance(msg, ChannelData):
                log.info("%s: %s ignored", self.label, type(msg).__name__)
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
    asked us to stop sending: QUIC stacks reset the stream on STOP_SENDING).

    The FIN rides on an empty Data message (`40 5e 00`) rather than alone: with qh3
    2.1.0 a FIN sent on its own after the data sometimes never reaches the peer (seen
    under load in tests/test_e2e_reverse.py::test_half_close_both_ways: the sender
    logged the FIN, the receiver never got it, for 30 s), while a FIN carried by data
    did not get lost once in the same runs. An empty Data message is ignored by every
    receiver of ours; only channels whose peer is ours use this (reference readers can
    lose a message's last byte when the FIN comes with it, Q7)."""
    if channel.eof_sent or channel.error is not None or channel.stop_sending_code is not None:
        return
    try:
        channel.protocol.send_channel_bytes(channel.channel_id, ChannelData(b"").encode(),
                                            end_stream=True)
        channel.eof_sent = True
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
