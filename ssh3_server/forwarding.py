"""Server side of TCP and UDP forwarding: `direct-tcp` and `direct-udp` channels.

PROTOCOL.md §3.3, §3.8, §3.9, §5. What we do beyond the reference (docs/forwarding.md):

* direct-tcp is confirmed only once the TCP connection is up; a connect failure is a
  ChannelOpenFailure(2) and a FIN, where the reference confirms at once and then stays
  silent forever (Q5);
* datagrams that arrive before their direct-udp channel is accepted are kept (a few
  per channel) and delivered once it is, where the reference keeps only the last (Q10);
* a UDP reply too large for one QUIC datagram is dropped and counted, the channel
  goes on (the reference closes it);
* idle UDP channels expire; policy flags can refuse either kind of forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ssh3.aio.channel import DEFAULT_MAX_PACKET_SIZE, Channel, ChannelClosed, run_both_ways
from ssh3.aio.conversation import Conversation
from ssh3.connection import STOP_SENDING_TCP_WRITE_FAILED
from ssh3.messages import (
    TCP_BY_NAME_CHANNEL_TYPE,
    ChannelData,
    ChannelOpenConfirmation,
    ChannelOpenFailure,
)

from .permissions import Permissions

log = logging.getLogger("ssh3.server.forwarding")

# RFC 4254 §5.1 reason codes
OPEN_ADMINISTRATIVELY_PROHIBITED = 1
OPEN_CONNECT_FAILED = 2

# direct-tcp-name@ssh3-py (EXT_TCP_BY_NAME) is direct-tcp with a name we resolve
TCP_TYPES = ("direct-tcp", TCP_BY_NAME_CHANNEL_TYPE)
FORWARD_TYPES = (*TCP_TYPES, "direct-udp")
# a channel we give up on is reset with H3_REQUEST_CANCELLED
CHANNEL_ABORTED = 0x10C
TCP_READ_SIZE = 64 * 1024
UDP_READ_SIZE = 65535
# a UDP socket whose kernel buffer is full buffers in asyncio; beyond this, drop
UDP_SEND_BUFFER_LIMIT = 256 * 1024
# early datagrams (Q10): per channel, and channel IDs not opened yet
EARLY_PER_CHANNEL = 8
EARLY_UNKNOWN_CHANNELS = 16
# Q7: a FIN right behind a varint-terminated message can cost a reference reader
# its last byte; give it this long to read the confirmation first
_FIN_GRACE = 1.0


@dataclass
class ForwardingPolicy:
    allow_tcp: bool = True
    allow_udp: bool = True
    # the login's Permissions: permitopen= and no-port-forwarding of its key
    permissions: Permissions | None = None
    connect_timeout: float = 10.0
    udp_idle_timeout: float = 120.0


@dataclass
class ForwardContext:
    """Who asked, for log lines, and whether the peer is one of ours."""

    user: str
    peer: str  # "ip port" of the client
    # our own clients announce extensions; with them Q7 does not apply
    peer_is_ours: Callable[[], bool]


class ForwardingConversation(Conversation):
    """A conversation that keeps datagrams arriving before their direct-udp channel
    is accepted, and that ends every forwarder it started when it ends.

    Early datagrams are normal: the client sends its first datagram right behind the
    channel header, and the datagram can overtake the header (another packet, or the
    accept still pending in our task queue)."""

    def __init__(self, protocol: Any, control_stream_id: int) -> None:
        super().__init__(protocol, control_stream_id)
        self._early: OrderedDict[int, list[bytes]] = OrderedDict()  # not opened yet
        self._awaiting: dict[int, list[bytes]] = {}  # opened, not accepted yet
        self._highest_opened = -1
        self.early_dropped = 0
        self.forward_tasks: set[asyncio.Task[Any]] = set()
        self.add_end_callback(self._end_forwarders)

    def _channel_opened(self, channel: Channel) -> None:
        cid = channel.channel_id
        self._highest_opened = max(self._highest_opened, cid)
        early = self._early.pop(cid, [])
        if channel.channel_type == "direct-udp":
            self._awaiting[cid] = early
        super()._channel_opened(channel)

    def _datagram_received(self, channel_id: int, payload: bytes) -> None:
        if channel_id in self._datagram_handlers:
            super()._datagram_received(channel_id, payload)
            return
        queue = self._awaiting.get(channel_id)
        if queue is None and channel_id > self._highest_opened and channel_id % 4 == 0:
            # a client-initiated channel whose header has not arrived yet
            queue = self._early.get(channel_id)
            if queue is None:
                if len(self._early) >= EARLY_UNKNOWN_CHANNELS:
                    _, lost = self._early.popitem(last=False)
                    self.early_dropped += len(lost)
                queue = self._early[channel_id] = []
        if queue is None or len(queue) >= EARLY_PER_CHANNEL:
            self.early_dropped += 1
            return
        queue.append(payload)

    def accept_datagrams(self, channel_id: int, handler: Callable[[bytes], None]) -> None:
        """Register the channel's handler and hand it what arrived early."""
        self.set_datagram_handler(channel_id, handler)
        for payload in self._awaiting.pop(channel_id, []):
            handler(payload)

    def refuse_datagrams(self, channel_id: int) -> None:
        self.set_datagram_handler(channel_id, None)
        self._awaiting.pop(channel_id, None)

    def track(self, task: asyncio.Task[Any]) -> None:
        self.forward_tasks.add(task)
        task.add_done_callback(self.forward_tasks.discard)

    def _end_forwarders(self, _conv: Conversation) -> None:
        for task in list(self.forward_tasks):
            task.cancel()
        self._early.clear()
        self._awaiting.clear()


async def serve_forward_channel(conv: Conversation, channel: Channel, ctx: ForwardContext,
                                policy: ForwardingPolicy) -> None:
    """Serve one direct-tcp or direct-udp channel to its end."""
    task = asyncio.current_task()
    if isinstance(conv, ForwardingConversation) and task is not None:
        conv.track(task)
    elif task is not None:
        conv.add_end_callback(lambda _c: task.cancel())
    try:
        if channel.channel_type in TCP_TYPES:
            await _serve_tcp(channel, ctx, policy)
        else:
            await _serve_udp(conv, channel, ctx, policy)
    except Exception:
        log.exception("%s channel %d for %s from %s failed", channel.channel_type,
                      channel.channel_id, ctx.user, ctx.peer)
    finally:
        if isinstance(conv, ForwardingConversation):
            conv.refuse_datagrams(channel.channel_id)
        else:
            conv.set_datagram_handler(channel.channel_id, None)
        _finish(channel)


def _finish(channel: Channel) -> None:
    """Let go of a channel: whichever direction is still open is aborted, so that the
    QUIC stream completes on both ends and the client gets its stream credit back."""
    if not channel.eof_received and channel.error is None:
        channel.protocol.stop_channel(channel.channel_id, CHANNEL_ABORTED)
    if not channel.eof_sent:
        channel.protocol.reset_channel(channel.channel_id, CHANNEL_ABORTED)
    channel.protocol.forget_channel(channel.channel_id)


def send_fin(channel: Channel) -> None:
    """FIN our direction, unless the stream can no longer take it (the peer reset it,
    or asked us to stop sending: QUIC stacks reset the stream on STOP_SENDING)."""
    if channel.eof_sent or channel.error is not None or channel.stop_sending_code is not None:
        return
    try:
        channel.send_eof()
    except Exception:  # noqa: BLE001 - the QUIC library's "stream was reset"
        log.debug("channel %d: FIN not sent (stream already reset)", channel.channel_id)


def _target_text(address: tuple[str, int] | None) -> str:
    if address is None:
        return "?"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0 \
            and not isinstance(exc, socket.gaierror):
        # asyncio's text ("Connect call failed (...)") hides the cause
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _refuse(channel: Channel, code: int, text: str) -> None:
    """ChannelOpenFailure then FIN. The language tag is "en", not empty: the message
    then ends in string bytes, which a reference reader gets whole even with the FIN
    right behind (Q7), where an empty tag's final length byte could be lost."""
    try:
        channel.send(ChannelOpenFailure(code, text, "en"))
        send_fin(channel)
    except ChannelClosed:
        pass


def _refuse_by_policy(channel: Channel, ctx: ForwardContext, kind: str) -> None:
    target = _target_text(channel.header.address)
    log.warning("%s to %s for %s from %s refused: %s forwarding is disabled",
                channel.channel_type, target, ctx.user, ctx.peer, kind)
    _refuse(channel, OPEN_ADMINISTRATIVELY_PROHIBITED,
            f"administratively prohibited: {kind} forwarding is disabled on this server")


def _refused_by_key(channel: Channel, ctx: ForwardContext, policy: ForwardingPolicy,
                    udp: bool) -> bool:
    """Refuse (and log) a forward the key's options do not allow: no-port-forwarding
    or restrict, or a destination outside its permitopen= list."""
    perms = policy.permissions
    if perms is None or channel.header.address is None:
        return False
    host, port = channel.header.address
    allowed = perms.permits_udp(host, port) if udp else perms.permits_open(host, port)
    if allowed:
        return False
    target = _target_text((host, port))
    why = ("port forwarding is not permitted for this key"
           if not (perms.allow_udp_forwarding if udp else perms.allow_tcp_forwarding)
           else f"{target} is not in the key's permitopen list")
    log.warning("%s to %s for %s from %s refused: %s", channel.channel_type, target,
                ctx.user, ctx.peer, why)
    _refuse(channel, OPEN_ADMINISTRATIVELY_PROHIBITED, f"administratively prohibited: {why}")
    return True


# ---------------------------------------------------------------- direct-tcp


async def _serve_tcp(channel: Channel, ctx: ForwardContext, policy: ForwardingPolicy) -> None:
    if not policy.allow_tcp:
        _refuse_by_policy(channel, ctx, "TCP")
        return
    if _refused_by_key(channel, ctx, policy, udp=False):
        return
    assert channel.header.address is not None  # the header parser requires one
    host, port = channel.header.address
    target = _target_text((host, port))
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                policy.connect_timeout)
    except (OSError, TimeoutError) as exc:
        reason = _reason(exc)
        log.warning("direct-tcp for %s from %s: connect to %s failed: %s", ctx.user, ctx.peer,
                    target, reason)
        _refuse(channel, OPEN_CONNECT_FAILED, f"connect to {target} failed: {reason}")
        return
    log.info("direct-tcp for %s from %s to %s (channel %d)", ctx.user, ctx.peer, target,
             channel.channel_id)
    relay = _TcpRelay(channel, reader, writer, ctx)
    try:
        channel.send(ChannelOpenConfirmation(DEFAULT_MAX_PACKET_SIZE))
        await relay.run()
    except ChannelClosed:
        pass
    finally:
        relay.close()


class _TcpRelay:
    """Data messages <-> TCP bytes, with half-close in both directions (§3.8)."""

    def __init__(self, channel: Channel, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, ctx: ForwardContext) -> None:
        self.channel = channel
        self.reader = reader
        self.writer = writer
        self.ctx = ctx
        self.confirmed_at = time.monotonic()
        self.data_sent = False
        self.aborted = False

    async def run(self) -> None:
        """Until both directions have ended, or the channel or the socket broke."""
        await run_both_ways(self.channel, [self._channel_to_tcp(), self._tcp_to_channel()],
                            self._abort, lambda: self.aborted)

    async def _channel_to_tcp(self) -> None:
        while True:
            try:
                msg = await self.channel.read()
            except ChannelClosed:
                self._abort()
                return
            if msg is None:
                # the client's half-close: ours to the target
                with contextlib.suppress(OSError):
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                return
            if not isinstance(msg, ChannelData):
                log.info("direct-tcp channel %d: %s ignored", self.channel.channel_id,
                         type(msg).__name__)
                continue
            if not msg.data:
                continue
            try:
                self.writer.writelines(self.channel.ready_data(msg.data))
                await self.writer.drain()
            except OSError as exc:
                # as the reference: STOP_SENDING 42 tells the client to give up
                log.info("direct-tcp channel %d: write to target failed: %s",
                         self.channel.channel_id, _reason(exc))
                self.channel.protocol.stop_channel(self.channel.channel_id,
                                                   STOP_SENDING_TCP_WRITE_FAILED)
                self._abort()
                return

    async def _tcp_to_channel(self) -> None:
        while True:
            try:
                data = await self.reader.read(TCP_READ_SIZE)
            except OSError as exc:
                # reset, not closed: the channel is reset too (by _finish), not FINned
                log.info("direct-tcp channel %d: read from target failed: %s",
                         self.channel.channel_id, _reason(exc))
                self._abort()
                return
            if not data:
                await self._send_eof()
                return
            try:
                await self.channel.write(data)
            except ChannelClosed:
                self._abort()
                return
            self.data_sent = True

    async def _send_eof(self) -> None:
        if not self.data_sent and not self.ctx.peer_is_ours():
            # only the confirmation went out: let a reference reader take it first (Q7)
            wait = self.confirmed_at + _FIN_GRACE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        send_fin(self.channel)

    def _abort(self) -> None:
        self.aborted = True
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()

    def close(self) -> None:
        if not self.writer.transport.is_closing():
            self.writer.close()


# ---------------------------------------------------------------- direct-udp


class _UdpTarget(asyncio.DatagramProtocol):
    def __init__(self, on_reply: Callable[[bytes], None]) -> None:
        self.on_reply = on_reply
        self.transport: asyncio.DatagramTransport | None = None
        self.last_activity = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last_activity = time.monotonic()
        self.on_reply(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: UDP is lossy, the channel goes on
        log.debug("direct-udp target error: %s", exc)

    def send(self, payload: bytes) -> bool:
        self.last_activity = time.monotonic()
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > UDP_SEND_BUFFER_LIMIT:
            return False
        transport.sendto(payload)
        return True


async def _serve_udp(conv: Conversation, channel: Channel, ctx: ForwardContext,
                     policy: ForwardingPolicy) -> None:
    cid = channel.channel_id
    if not policy.allow_udp:
        if isinstance(conv, ForwardingConversation):
            conv.refuse_datagrams(cid)
        _refuse_by_policy(channel, ctx, "UDP")
        return
    if _refused_by_key(channel, ctx, policy, udp=True):
        if isinstance(conv, ForwardingConversation):
            conv.refuse_datagrams(cid)
        return
    assert channel.header.address is not None
    host, port = channel.header.address
    target = _target_text((host, port))
    dropped = 0

    def reply(payload: bytes) -> None:
        nonlocal dropped
        if not conv.send_datagram(cid, payload):
            # counted by the core too; one line per channel at most
            dropped += 1
            log.debug("direct-udp channel %d: %d-byte reply from %s does not fit one "
                      "datagram; dropped", cid, len(payload), target)

    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        transport, udp = await loop.create_datagram_endpoint(
            lambda: _UdpTarget(reply), remote_addr=(host, port), family=family)
    except OSError as exc:
        reason = _reason(exc)
        log.warning("direct-udp for %s from %s: cannot reach %s: %s", ctx.user, ctx.peer,
                    target, reason)
        if isinstance(conv, ForwardingConversation):
            conv.refuse_datagrams(cid)
        _refuse(channel, OPEN_CONNECT_FAILED, f"connect to {target} failed: {reason}")
        return
    log.info("direct-udp for %s from %s to %s (channel %d)", ctx.user, ctx.peer, target, cid)
    try:
        channel.send(ChannelOpenConfirmation(DEFAULT_MAX_PACKET_SIZE))

        def forward(payload: bytes) -> None:
            if not udp.send(payload):
                log.debug("direct-udp channel %d: send buffer full; datagram dropped", cid)

        if isinstance(conv, ForwardingConversation):
            conv.accept_datagrams(cid, forward)
        else:
            conv.set_datagram_handler(cid, forward)
        ended = await _udp_wait_end(channel, udp, policy.udp_idle_timeout)
        # one flow per client source port (DNS: per query): the end is detail
        log.log(logging.INFO if dropped else logging.DEBUG,
                "direct-udp channel %d to %s ended: %s%s", cid, target, ended,
                f" ({dropped} oversized replies dropped)" if dropped else "")
        if ended != "channel reset":
            # the stream held nothing but the confirmation, long read by now
            send_fin(channel)
    except ChannelClosed:
        pass
    finally:
        transport.close()


async def _udp_wait_end(channel: Channel, udp: _UdpTarget, idle_timeout: float) -> str:
    """Read the channel (nothing but EOF is expected on it) until it ends or the flow
    has been idle for `idle_timeout`; return why it ended."""
    reading = asyncio.ensure_future(_drain_channel(channel))
    try:
        while True:
            idle = time.monotonic() - udp.last_activity
            if idle >= idle_timeout:
                return f"idle for {idle_timeout:.0f} s"
            done, _ = await asyncio.wait({reading}, timeout=idle_timeout - idle)
            if done:
                return reading.result()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


async def _drain_channel(channel: Channel) -> str:
    while True:
        try:
            msg = await channel.read()
        except ChannelClosed:
            return "channel reset"
        if msg is None:
            return "client closed the channel"
        log.debug("direct-udp channel %d: %s ignored", channel.channel_id, type(msg).__name__)
