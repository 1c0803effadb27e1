"""A datagram transport carried by a `direct-udp` channel (proxy jump, PROTOCOL.md §3.9).

The inner QUIC connection to the final host uses this object where it would use a
UDP socket: each packet it sends becomes one SSH3 datagram on the jump host's
conversation (`[control stream][channel][packet]`, §5.1), and the jump host relays
it as a UDP packet to the target; the target's packets come back the same way and
are handed to the inner protocol's `datagram_received`. The jump host sees only
ciphertext: TLS runs end to end between us and the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..connection import H3_REQUEST_CANCELLED as CHANNEL_ABORTED
from ..messages import ChannelOpenFailure
from .channel import ChannelClosed
from .conversation import Conversation

log = logging.getLogger("ssh3.jump")

# the inner connection's packet size: QUIC's minimum (RFC 9000 §14), so that an
# inner packet plus the outer framing fits the jump host's packets
INNER_PACKET_SIZE = 1200


class TunnelError(Exception):
    """The jump host refused or lost the direct-udp channel."""


class ChannelDatagramTransport(asyncio.DatagramTransport):
    """`sendto`/`close`/`get_extra_info` over one direct-udp channel of `conv`."""

    def __init__(self, conv: Conversation, target: tuple[str, int], jump_label: str) -> None:
        super().__init__()
        self.conv = conv
        self.target = target
        self.jump_label = jump_label
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.dropped = 0
        self.sent = 0
        self.received = 0
        self._protocol: Any = None
        self._closing = False
        self._answered = False
        # the reference opens the channel with the first packet (§3.9); the header
        # goes out now and the first packet follows it in the same flight
        self.channel = conv.open_channel("direct-udp", address=target)
        conv.set_datagram_handler(self.channel.channel_id, self._received)
        conv.add_end_callback(self._conversation_ended)
        self._watcher = asyncio.ensure_future(self._watch())

    def __repr__(self) -> str:
        return f"<ChannelDatagramTransport {self.target} via {self.jump_label}>"

    # ------------------------------------------------------------ asyncio API

    def set_protocol(self, protocol: Any) -> None:
        self._protocol = protocol

    def get_protocol(self) -> Any:
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.target
        if name == "sockname":
            return ("0.0.0.0", 0)  # no local socket: the jump host's channel
        if name == "jump_channel":
            return self.channel
        return default

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return 0

    def sendto(self, data: bytes, addr: Any = None) -> None:  # type: ignore[override]
        if self._closing or self.conv.ended.is_set():
            return
        if self.conv.send_datagram(self.channel.channel_id, bytes(data)):
            self.sent += 1
            return
        # an inner packet that does not fit one outer datagram is lost; QUIC
        # retransmits, but a path where no inner packet fits never works
        self.dropped += 1
        if self.dropped == 1:
            limit = self.conv.protocol.connection.max_datagram_payload(
                self.conv.control_stream_id, self.channel.channel_id)
            log.warning("jump host %s: a %d-byte packet to %s does not fit one datagram "
                        "(at most %d bytes)", self.jump_label, len(data),
                        _host_port(self.target), limit)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.conv.set_datagram_handler(self.channel.channel_id, None)
        if not self._watcher.done():
            self._watcher.cancel()
        channel = self.channel
        if channel.error is None and not self.conv.ended.is_set():
            # after the jump host's answer a FIN is safe for the reference (§3.3);
            # whatever direction is still open is then aborted, so that the QUIC
            # stream completes on both ends and its credit comes back
            if self._answered and channel.stop_sending_code is None:
                with contextlib.suppress(Exception):
                    channel.send_eof()
            if not channel.eof_received:
                channel.protocol.stop_channel(channel.channel_id, CHANNEL_ABORTED)
            if not channel.eof_sent:
                channel.protocol.reset_channel(channel.channel_id, CHANNEL_ABORTED)
        channel.protocol.forget_channel(channel.channel_id)
        if not self.failed.done():
            self.failed.set_result(None)

    def abort(self) -> None:
        self.close()

    # ------------------------------------------------------------ inside

    def _received(self, payload: bytes) -> None:
        self._answered = True
        if self._protocol is not None and not self._closing:
            self.received += 1
            self._protocol.datagram_received(payload, self.target)

    async def _watch(self) -> None:
        """The stream carries only the jump host's answer: a refusal ends the
        tunnel at once (no waiting for a handshake timeout)."""
        try:
            while True:
                msg = await self.channel.read()
                if msg is None:
                    self._fail("the jump host closed the UDP channel")
                    return
                self._answered = True
                if isinstance(msg, ChannelOpenFailure):
                    self._fail(f"the jump host refused: {msg.message}")
                    return
        except ChannelClosed as exc:
            self._fail(str(exc))

    def _conversation_ended(self, conv: Conversation) -> None:
        self._fail(f"the conversation with the jump host ended ({conv.end_reason})")

    def _fail(self, reason: str) -> None:
        if self._closing:
            return
        text = (f"jump host {self.jump_label} cannot carry the connection to "
                f"{_host_port(self.target)}: {reason}")
        log.debug("%s", text)
        if not self.failed.done():
            self.failed.set_exception(TunnelError(text))
            self.failed.exception()  # retrieved: nobody may be waiting any more
        protocol = self._protocol
        if protocol is not None and hasattr(protocol, "tunnel_lost"):
            protocol.tunnel_lost(text)


def _host_port(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
