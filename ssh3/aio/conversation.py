"""A conversation: one extended CONNECT and the channels and datagrams that name it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..messages import ChannelHeader, Message
from .channel import DEFAULT_MAX_PACKET_SIZE, Channel

if TYPE_CHECKING:
    from .protocol import SSH3Protocol

log = logging.getLogger("ssh3.aio")

DatagramHandler = Callable[[bytes], None]


class Conversation:
    def __init__(self, protocol: SSH3Protocol, control_stream_id: int) -> None:
        self.protocol = protocol
        self.control_stream_id = control_stream_id
        self.accepting = True
        self.on_channel: Callable[[Channel], None] | None = None
        self._incoming: asyncio.Queue[Channel | None] = asyncio.Queue()
        self._datagram_handlers: dict[int, DatagramHandler] = {}
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self._end_callbacks: list[Callable[[Conversation], None]] = []
        protocol.register_conversation(self)

    def __repr__(self) -> str:
        return f"<Conversation {self.control_stream_id}>"

    @property
    def conversation_id(self) -> bytes | None:
        return self.protocol.connection.conversation_id

    @property
    def peer_extensions(self) -> int:
        return self.protocol.connection.peer_extensions

    # ------------------------------------------------------------ channels

    def open_channel(self, channel_type: str, *, address: tuple[str, int] | None = None,
                     first: Message | None = None, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
                     ipv4_mapped: bool = False) -> Channel:
        header = ChannelHeader(self.control_stream_id, channel_type, max_packet_size, address)
        return self.protocol.open_channel(self, header, first.encode() if first else b"",
                                          ipv4_mapped=ipv4_mapped)

    def _channel_opened(self, channel: Channel) -> None:
        if self.on_channel is not None:
            self.on_channel(channel)
        else:
            self._incoming.put_nowait(channel)

    async def accept_channel(self) -> Channel | None:
        """Next channel the peer opened (None once the conversation ended)."""
        if self.ended.is_set() and self._incoming.empty():
            return None
        return await self._incoming.get()

    # ------------------------------------------------------------ datagrams

    def set_datagram_handler(self, channel_id: int, handler: DatagramHandler | None) -> None:
        if handler is None:
            self._datagram_handlers.pop(channel_id, None)
        else:
            self._datagram_handlers[channel_id] = handler

    def _datagram_received(self, channel_id: int, payload: bytes) -> None:
        handler = self._datagram_handlers.get(channel_id)
        if handler is not None:
            handler(payload)

    def send_datagram(self, channel_id: int, payload: bytes) -> bool:
        ok = self.protocol.connection.send_datagram(self.control_stream_id, channel_id, payload)
        self.protocol.transmit_soon()
        return ok

    # ------------------------------------------------------------ end

    def add_end_callback(self, callback: Callable[[Conversation], None]) -> None:
        if self.ended.is_set():
            callback(self)
        else:
            self._end_callbacks.append(callback)

    def _control_stream_ended(self) -> None:
        self._ended("peer closed the control stream")

    def _ended(self, reason: str) -> None:
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.accepting = False
        self.ended.set()
        self._incoming.put_nowait(None)
        self.protocol.unregister_conversation(self)
        for callback in self._end_callbacks:
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                log.exception("conversation end callback failed")

    def close(self, reason: str = "closed locally") -> None:
        """End the conversation: FIN our side of the control stream."""
        if not self.ended.is_set() and not self.protocol.terminated.is_set():
            try:
                self.protocol.connection.send_http_data(self.control_stream_id, b"", True)
                self.protocol.transmit_soon()
            except Exception:  # noqa: BLE001 - stream may be gone already
                pass
        self._ended(reason)
