"""The asyncio driver: a QUIC protocol object that runs an `SSH3Connection` and turns
its events into Conversation and Channel objects."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from typing import Any

from .. import connection as c
from ..backends import Backend
from ..backends.gso import GsoSender
from ..messages import ChannelHeader
from .channel import Channel
from .conversation import Conversation
from .early import EarlyChannels

log = logging.getLogger("ssh3.aio")

RECEIVE_WINDOW = 16 << 20

_classes: dict[str, type] = {}

# ICMP answers that mean "not there" (OpenSSH reports them as connect(2) errors)
_FATAL_BEFORE_HANDSHAKE = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                           errno.EHOSTDOWN}


class ProtocolHandler:
    """What the program above the driver reacts to (a server or a client)."""

    # a server that calls expect/release/discard_early_channels around its
    # authentication announces EXT_EARLY_CHANNELS and has early channels held
    early_channels = False

    def request_received(self, protocol: SSH3Protocol, event: c.RequestReceived) -> None:
        protocol.connection.send_headers(event.stream_id, [(b":status", b"404")], end_stream=True)

    def connection_started(self, protocol: SSH3Protocol) -> None:
        return None

    def connection_lost(self, protocol: SSH3Protocol) -> None:
        return None


def protocol_class(backend: Backend) -> type[SSH3Protocol]:
    """The SSH3 protocol class built on `backend`'s QuicConnectionProtocol."""
    if backend.name not in _classes:
        base = backend.protocol_class
        _classes[backend.name] = type(f"SSH3Protocol_{backend.name}", (SSH3ProtocolMixin, base),
                                      {"backend": backend})
    return _classes[backend.name]  # type: ignore[return-value]


def protocol_factory(backend: Backend, handler: ProtocolHandler) -> Callable[..., Any]:
    cls = protocol_class(backend)

    def create(quic: Any, *args: Any, **kwargs: Any) -> Any:
        proto = cls(quic, *args, **kwargs)
        proto.setup(handler)
        handler.connection_started(proto)
        return proto

    return create


class SSH3ProtocolMixin:
    """Mixed in before the backend's QuicConnectionProtocol (see `protocol_class`)."""

    backend: Backend
    _quic: Any
    _loop: asyncio.AbstractEventLoop

    def setup(self, handler: ProtocolHandler) -> None:
        self.handler = handler
        is_client = bool(self._quic.configuration.is_client)
        self._hold_early = handler.early_channels and not is_client
        # a handler may announce fewer extensions (ssh3-server -extensions-mask)
        extensions = getattr(handler, "extensions", c.OUR_EXTENSIONS)
        if self._hold_early:
            extensions |= c.EXT_EARLY_CHANNELS
        self.connection = c.SSH3Connection(self._quic, self.backend, is_client=is_client,
                                           extensions=extensions)
        self.early: EarlyChannels[Channel] = EarlyChannels()
        # request streams whose HEADERS were complete (server with early channels)
        self._requests_seen: set[int] = set()
        self.backend.install_receive_window(self._quic, RECEIVE_WINDOW)
        self.conversations: dict[int, Conversation] = {}
        self.channels: dict[int, Channel] = {}
        self.settings_received = asyncio.Event()
        self.handshake_done = asyncio.Event()
        self.terminated = asyncio.Event()
        self.termination: c.ConnectionTerminated | None = None
        self._write_waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._http_waiters: dict[int, asyncio.Queue[c.Event]] = {}
        self.remote_address: Any = None
        self._largest_received = 0

    # ------------------------------------------------------------ I/O hooks

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._gso: GsoSender | None = None
        if self.backend.batch_sends and not os.environ.get("SSH3_PLAIN_UDP"):
            # the packets of one transmit leave in GSO batches (backends/gso.py)
            self._gso = GsoSender.wrap(transport)
            if self._gso is not None:
                self._transport = self._gso

    def connection_lost(self, exc: Exception | None) -> None:
        gso = getattr(self, "_gso", None)
        if gso is not None:
            gso.close()
        super().connection_lost(exc)  # type: ignore[misc]

    def connect(self, addr: Any, *args: Any, **kwargs: Any) -> None:
        """Client: connect(2) the UDP socket to the server first. Only a connected
        socket hears ICMP port-unreachable (as ECONNREFUSED), which turns "nothing
        listens there" into a prompt "Connection refused" instead of a timeout."""
        transport = getattr(self, "_transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            import socket

            try:
                # a dup shares the socket: connecting it connects the transport's
                with socket.socket(fileno=os.dup(sock.fileno())) as dup:
                    dup.connect(addr)
            except OSError as exc:
                log.debug("cannot connect the UDP socket to %s: %s", addr, exc)
        super().connect(addr, *args, **kwargs)  # type: ignore[misc]

    def error_received(self, exc: Exception) -> None:
        """ICMP errors reach a connected socket. Before the handshake completes a
        refusal or an unreachable host ends the attempt (the QUIC handshake would
        only time out); after it, QUIC's own timers decide, as a stray ICMP message
        is easy to forge."""
        waiter = getattr(self, "_connected_waiter", None)
        code = getattr(exc, "errno", None)
        if code in _FATAL_BEFORE_HANDSHAKE and waiter is not None and not waiter.done():
            self._connected_waiter = None
            waiter.set_exception(OSError(code, os.strerror(code)) if code != errno.ECONNREFUSED
                                 else ConnectionRefusedError(code, "Connection refused"))
            self.close_now()
        else:
            log.debug("UDP socket error: %s", exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.remote_address is None:
            self.remote_address = addr
        if len(data) > self._largest_received:
            self._adopt(len(data))
        super().datagram_received(data, addr)  # type: ignore[misc]

    def _adopt(self, size: int) -> None:
        # the peer's packets show how big ours may be: room to relay proxy-jump
        # packets (ssh3/aio/jump.py) without path MTU discovery
        self._largest_received = size
        adopt = self.backend.adopt_packet_size
        if adopt is not None:
            adopt(self._quic, size)

    def datagrams_received(self, data: list[bytes], addr: Any) -> None:
        # a burst of packets (qh3's transport, or backends/batched_udp.py): one
        # transmit after all of them, not one per packet
        if self.remote_address is None:
            self.remote_address = addr
        largest = max((len(d) for d in data), default=0)
        if largest > self._largest_received:
            self._adopt(largest)
        batch = getattr(super(), "datagrams_received", None)
        if batch is not None:
            batch(data, addr)
            return
        now = self._loop.time()
        for datagram in data:
            self._quic.receive_datagram(datagram, addr, now=now)
        self._process_events()  # type: ignore[attr-defined]
        self.transmit()

    async def wait_connected(self) -> None:
        try:
            await super().wait_connected()  # type: ignore[misc]
        except asyncio.CancelledError:
            # a connect timeout: the library's waiter (behind a shield) fails later,
            # when the connection is given up; nobody awaits it any more, so retrieve
            # its exception ("Future exception was never retrieved" otherwise)
            waiter = getattr(self, "_connected_waiter", None)
            if waiter is not None:
                waiter.add_done_callback(_retrieve)
            raise

    def transmit(self) -> None:
        if self._hold_early and not self.handshake_done.is_set():
            # our SETTINGS (EXT_EARLY_CHANNELS) in the first flight, before the CONNECT
            self.backend.release_early_streams(self._quic)
        # every receive, timer and send ends here: the moment send buffers shrink
        gso = getattr(self, "_gso", None)
        if gso is None:
            super().transmit()  # type: ignore[misc]
        else:
            gso.hold()
            try:
                super().transmit()  # type: ignore[misc]
            finally:
                gso.flush()
        self._wake_writers()

    def quic_event_received(self, event: Any) -> None:
        try:
            events = self.connection.handle_event(event)
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the server
            log.exception("internal error handling %s", type(event).__name__)
            self._quic.close(error_code=c.H3_INTERNAL_ERROR, reason_phrase=str(exc)[:100])
            return
        for ev in events:
            self._dispatch(ev)

    def close_connection(self, error_code: int = c.H3_NO_ERROR, reason: str = "") -> None:
        """CONNECTION_CLOSE with the normal closing period (servers: the connection
        leaves the server's tables when the period ends)."""
        self._quic.close(error_code=error_code, reason_phrase=reason)
        self.transmit()

    def close_now(self, error_code: int = c.H3_NO_ERROR, reason: str = "") -> None:
        """Send CONNECTION_CLOSE and stop at once, without the closing period
        (3 PTOs, ~80 ms on loopback): the peer learns of the close from the frame,
        and a lost frame only costs it an idle timeout."""
        self._quic.close(error_code=error_code, reason_phrase=reason)
        self.transmit()
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
            self._timer = None
        self._closed.set()  # type: ignore[attr-defined]

    def tunnel_lost(self, reason: str) -> None:
        """Our packets ride a jump host's channel (proxy jump) and it went away:
        end as if the peer had closed, so that every waiter hears it now."""
        self._dispatch(c.ConnectionTerminated(c.H3_NO_ERROR, reason))
        self.close_now(reason=reason[:100])

    def transmit_soon(self) -> None:
        self._transmit_soon()  # type: ignore[attr-defined]

    # ------------------------------------------------------------ dispatch

    def _dispatch(self, ev: c.Event) -> None:
        if isinstance(ev, c.MessageReceived):
            channel = self.channels.get(ev.channel_id)
            if channel is not None:
                channel._feed(ev.message, ev.size)
                if ev.size and self.early.is_held(ev.channel_id):
                    over = self.early.add_bytes(ev.channel_id, ev.size)
                    for held in over:
                        self._reset_held(held, "more than "
                                         f"{self.early.max_bytes} bytes before authentication")
            else:
                self.consume(ev.channel_id, ev.size)
        elif isinstance(ev, c.ChannelOpened):
            self._channel_opened(ev.channel_id, ev.header)
        elif isinstance(ev, c.ChannelEOF):
            channel = self.channels.get(ev.channel_id)
            if channel is not None:
                channel._feed_eof()
        elif isinstance(ev, c.ChannelReset):
            self._channel_failed(ev.channel_id, f"reset by peer with code {ev.error_code:#x}")
        elif isinstance(ev, c.ChannelStopSending):
            channel = self.channels.get(ev.channel_id)
            if channel is not None:
                channel.stop_sending_code = ev.error_code
                self._wake_writers()
        elif isinstance(ev, c.ChannelProtocolError):
            log.warning("channel %d: protocol error from %s: %s", ev.channel_id,
                        self._peer_text(), ev.error)
            self.connection.reset_stream(ev.channel_id, c.H3_REQUEST_INCOMPLETE)
            self.connection.stop_stream(ev.channel_id, c.H3_REQUEST_INCOMPLETE)
            self._channel_failed(ev.channel_id, f"protocol error: {ev.error}")
        elif isinstance(ev, c.DatagramReceived):
            conv = self.conversations.get(ev.control_stream_id)
            if conv is not None:
                conv._datagram_received(ev.channel_id, ev.payload)
        elif isinstance(ev, c.RequestReceived):
            if self._hold_early:
                self._requests_seen.add(ev.stream_id)
            self.handler.request_received(self, ev)  # type: ignore[arg-type]
            if not self.early.is_expected(ev.stream_id):
                # channels that named this stream before it arrived: no CONNECT after all
                self.discard_early_channels(ev.stream_id, "the request is not a CONNECT")
        elif isinstance(ev, c.ResponseReceived | c.HttpDataReceived | c.HttpStreamReset):
            queue = self._http_waiters.get(ev.stream_id)
            if queue is not None:
                queue.put_nowait(ev)
            conv = self.conversations.get(ev.stream_id)
            if conv is not None and (isinstance(ev, c.HttpStreamReset)
                                     or getattr(ev, "stream_ended", False)):
                conv._control_stream_ended()
        elif isinstance(ev, c.SettingsReceived):
            self.settings_received.set()
        elif isinstance(ev, c.HandshakeCompleted):
            self.handshake_done.set()
        elif isinstance(ev, c.ConnectionTerminated):
            self._terminated(ev)

    def _channel_opened(self, channel_id: int, header: ChannelHeader) -> None:
        conv = self.conversations.get(header.control_stream_id)
        if (conv is None or not conv.accepting) and self._hold_early \
                and self._hold_channel(channel_id, header):
            return
        if conv is None or not conv.accepting:
            # like the reference (§3.6): no such conversation -> reset the stream
            log.info("channel %d names unknown conversation %d; reset", channel_id,
                     header.control_stream_id)
            self.connection.reset_stream(channel_id, c.H3_REQUEST_INCOMPLETE)
            self.connection.stop_stream(channel_id, c.H3_REQUEST_INCOMPLETE)
            self.connection.forget_channel(channel_id)
            return
        channel = Channel(self, channel_id, header, local=False)  # type: ignore[arg-type]
        self.channels[channel_id] = channel
        conv._channel_opened(channel)

    def _hold_channel(self, channel_id: int, header: ChannelHeader) -> bool:
        """EXT_EARLY_CHANNELS: keep a channel whose CONNECT is being authenticated
        (or has not arrived yet) until the server's answer, or reset it past the caps;
        False: no CONNECT is pending for it (the caller resets it as unknown)."""
        control = header.control_stream_id
        # "not seen" means no complete request yet: a CONNECT whose HEADERS span
        # several packets (a JWT carrying a certificate) has bytes but no request
        unannounced = (control % 4 == 0 and control < channel_id
                       and control not in self._requests_seen)
        channel = Channel(self, channel_id, header, local=False)  # type: ignore[arg-type]
        held, reason = self.early.admit(control, channel_id, channel, unannounced)
        if not held and not reason:
            return False  # nothing names this control stream: the usual reset
        self.channels[channel_id] = channel
        if not held:
            self._reset_held(channel, reason)
            return True
        log.info("channel %d held until conversation %d is authenticated", channel_id,
                 control)
        return True

    def expect_early_channels(self, control_stream_id: int) -> None:
        """Server: a CONNECT on this stream is being authenticated; hold its channels."""
        if self._hold_early:
            self.early.expect(control_stream_id)

    def release_early_channels(self, conv: Conversation) -> None:
        """Server: 200 sent; the held channels go to the conversation, oldest first."""
        for channel in self.early.release(conv.control_stream_id):
            if channel.error is None:
                conv._channel_opened(channel)

    def discard_early_channels(self, control_stream_id: int, reason: str) -> None:
        """Server: the CONNECT was refused; its held channels are reset, unread."""
        for channel in self.early.discard(control_stream_id):
            self._reset_held(channel, reason)

    def _reset_held(self, channel: Channel, reason: str) -> None:
        log.info("channel %d held for conversation %d from %s dropped: %s",
                 channel.channel_id, channel.control_stream_id, self._peer_text(), reason)
        self.early.forget(channel.channel_id)
        self.connection.reset_stream(channel.channel_id, c.H3_REQUEST_INCOMPLETE)
        self.connection.stop_stream(channel.channel_id, c.H3_REQUEST_INCOMPLETE)
        channel._feed_error(f"dropped before authentication: {reason}")
        self.forget_channel(channel.channel_id)
        self.transmit_soon()

    def _channel_failed(self, channel_id: int, reason: str) -> None:
        self.early.forget(channel_id)
        channel = self.channels.get(channel_id)
        if channel is not None:
            channel._feed_error(reason)
            self._wake_writers()

    def _terminated(self, ev: c.ConnectionTerminated) -> None:
        if self.terminated.is_set():
            return
        self.termination = ev
        self.terminated.set()
        self.early.discard_all()
        reason = f"connection closed ({ev.error_code:#x} {ev.reason})".strip()
        for channel in list(self.channels.values()):
            channel._feed_error(reason)
        for conv in list(self.conversations.values()):
            conv._ended(reason)
        for queue in self._http_waiters.values():
            queue.put_nowait(ev)
        self._wake_writers(all_waiters=True)
        self.settings_received.set()
        self.handler.connection_lost(self)  # type: ignore[arg-type]

    def _peer_text(self) -> str:
        addr = self.remote_address
        return f"{addr[0]}:{addr[1]}" if addr else "?"

    # ------------------------------------------------------------ used by objects

    def register_conversation(self, conv: Conversation) -> None:
        self.conversations[conv.control_stream_id] = conv

    def unregister_conversation(self, conv: Conversation) -> None:
        if self.conversations.get(conv.control_stream_id) is conv:
            del self.conversations[conv.control_stream_id]

    def open_channel(self, conv: Conversation, header: ChannelHeader, first: bytes = b"",
                     ipv4_mapped: bool = False) -> Channel:
        cid = self.connection.open_channel(header, first, ipv4_mapped=ipv4_mapped)
        channel = Channel(self, cid, header, local=True)  # type: ignore[arg-type]
        self.channels[cid] = channel
        self.transmit_soon()
        return channel

    def forget_channel(self, channel_id: int) -> None:
        self.channels.pop(channel_id, None)
        self.connection.forget_channel(channel_id)

    def send_channel_bytes(self, channel_id: int, data: bytes, end_stream: bool = False) -> None:
        self.connection.send_channel_data(channel_id, data, end_stream)
        self.transmit_soon()

    def reset_channel(self, channel_id: int, code: int) -> None:
        self.connection.reset_stream(channel_id, code)
        self.transmit_soon()

    def stop_channel(self, channel_id: int, code: int) -> None:
        self.connection.stop_stream(channel_id, code)
        self.transmit_soon()

    def consume(self, channel_id: int, nbytes: int) -> None:
        self.backend.consume(self._quic, channel_id, nbytes)
        # a window update may now be due; transmit builds it
        self.transmit_soon()

    def http_events(self, stream_id: int) -> asyncio.Queue[c.Event]:
        return self._http_waiters.setdefault(stream_id, asyncio.Queue())

    def forget_http(self, stream_id: int) -> None:
        self._http_waiters.pop(stream_id, None)

    async def wait_writable(self, channel_id: int, high_water: int) -> None:
        while (not self.terminated.is_set()
               and self.backend.send_buffer_size(self._quic, channel_id) > high_water):
            channel = self.channels.get(channel_id)
            if channel is not None and (channel.error or channel.stop_sending_code is not None):
                return
            fut = self._loop.create_future()
            self._write_waiters.setdefault(channel_id, []).append(fut)
            await fut

    def _wake_writers(self, all_waiters: bool = False) -> None:
        if not self._write_waiters:
            return
        for sid in list(self._write_waiters):
            channel = self.channels.get(sid)
            broken = channel is None or channel.error or channel.stop_sending_code is not None
            if (all_waiters or broken or self.terminated.is_set()
                    or self.backend.send_buffer_size(self._quic, sid) <= 1 << 19):
                for fut in self._write_waiters.pop(sid):
                    if not fut.done():
                        fut.set_result(None)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# the mixin's methods must win over the backend base class
SSH3Protocol = SSH3ProtocolMixin
