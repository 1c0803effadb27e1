"""TCP and UDP forwarding over a conversation: the machinery shared by the `ssh3`
program (-L, -forward-tcp, -forward-udp, -D, -W) and the library API
(`Connection.forward_local_port`, `open_connection`, `open_udp_forward`).

Each accepted local TCP connection gets its own `direct-tcp` channel; each local UDP
source address gets its own `direct-udp` channel, whose payloads travel as QUIC
datagrams (PROTOCOL.md §3.3, §3.8, §3.9, §5). The wire carries only IP addresses, so
a host name is resolved here, on the client (as the reference does for its proxy
jump), not on the server as OpenSSH would. See docs/forwarding.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .aio.channel import Channel, ChannelClosed, run_both_ways
from .aio.conversation import Conversation
from .connection import STOP_SENDING_TCP_WRITE_FAILED
from .messages import ChannelData, ChannelOpenConfirmation, ChannelOpenFailure

log = logging.getLogger("ssh3.client.forwarding")

TCP_READ_SIZE = 64 * 1024
# code for a channel we give up on (H3_REQUEST_CANCELLED): resetting our side lets
# the QUIC stream complete, so that the server can hand the stream credit back
CHANNEL_ABORTED = 0x10C
UDP_IDLE_TIMEOUT = 120.0
# concurrent UDP flows per listener: each holds a QUIC stream, and servers allow
# about 100 open streams; the least recently used flow is closed beyond this
MAX_UDP_FLOWS = 64
UDP_SEND_BUFFER_LIMIT = 256 * 1024

Report = Callable[[str], None]


class ForwardError(Exception):
    """A forwarding that cannot be set up (bad flag, name not found, port in use)."""


@dataclass(frozen=True)
class ForwardSpec:
    protocol: Literal["tcp", "udp"]
    listen_host: str | None  # None: every interface
    listen_port: int
    target_host: str  # as given: an IP address, or a name (-L) resolved before use
    target_port: int
    text: str  # the flag as given, for messages

    @property
    def target_text(self) -> str:
        return host_port(self.target_host, self.target_port)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"




async def resolve(spec: ForwardSpec) -> tuple[str, int]:
    """The target as an IP address: the channel header has room for nothing else."""
    try:
        ipaddress.ip_address(spec.target_host)
        return spec.target_host, spec.target_port
    except ValueError:
        pass
    kind = socket.SOCK_STREAM if spec.protocol == "tcp" else socket.SOCK_DGRAM
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(spec.target_host, spec.target_port, type=kind)
    except OSError as exc:
        raise ForwardError(f"cannot resolve {spec.target_host} for {spec.text!r}: "
                           f"{_os_reason(exc)}") from None
    # IPv4 first, as Go's resolver picks: "localhost" must not become ::1 when the
    # service listens on 127.0.0.1 only (the server cannot try the next address)
    for want in (socket.AF_INET, socket.AF_INET6):
        for family, _type, _proto, _name, sockaddr in infos:
            if family == want:
                return str(sockaddr[0]).split("%")[0], spec.target_port
    raise ForwardError(f"{spec.target_host} has no IP address (for {spec.text!r})")


def send_fin(channel: Channel) -> None:
    """FIN our direction, unless the stream can no longer take it (the peer reset it,
    or asked us to stop sending: QUIC stacks reset the stream on STOP_SENDING)."""
    if channel.eof_sent or channel.error is not None or channel.stop_sending_code is not None:
        return
    try:
        channel.send_eof()
    except Exception:  # noqa: BLE001 - the QUIC library's "stream was reset"
        log.debug("channel %d: FIN not sent (stream already reset)", channel.channel_id)


def _finish(channel: Channel) -> None:
    """Let go of a channel: whichever direction is still open is aborted, so that the
    QUIC stream completes on both ends (and its stream credit comes back)."""
    if not channel.eof_received and channel.error is None:
        channel.protocol.stop_channel(channel.channel_id, CHANNEL_ABORTED)
    if not channel.eof_sent:
        channel.protocol.reset_channel(channel.channel_id, CHANNEL_ABORTED)
    channel.protocol.forget_channel(channel.channel_id)


def _os_reason(exc: OSError) -> str:
    # asyncio wraps bind errors in its own text ("error while attempting to bind ...")
    if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)


def _log_report(text: str) -> None:
    """The library's default: problems a program would print go to the log."""
    log.warning("%s", text)



# ---------------------------------------------------------------- TCP


class TcpForwarder:
    """A local listener; one direct-tcp channel per accepted connection."""

    def __init__(self, conv: Conversation, spec: ForwardSpec, target: tuple[str, int],
                 report: Report = _log_report) -> None:
        self.conv = conv
        self.spec = spec
        self.target = target
        self.report = report
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._accepted, self.spec.listen_host, self.spec.listen_port)
        except OSError as exc:
            where = host_port(self.spec.listen_host or "*", self.spec.listen_port)
            raise ForwardError(f"cannot listen on TCP {where} for {self.spec.text!r}: "
                               f"{_os_reason(exc)}") from None
        log.info("forwarding TCP %s -> %s", self.spec.listen_port, host_port(*self.target))

    def get_port(self) -> int:
        """The local port listened on (the one picked when the spec asked for 0)."""
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._relay(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.conv.ended.is_set():
            writer.transport.abort()
            return
        channel = self.conv.open_channel("direct-tcp", address=self.target)
        try:
            await _TcpRelay(channel, reader, writer, self.spec, self.report).run()
        finally:
            if not writer.transport.is_closing():
                writer.close()
            _finish(channel)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


class _TcpRelay:
    def __init__(self, channel: Channel, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, spec: ForwardSpec, report: Report) -> None:
        self.channel = channel
        self.reader = reader
        self.writer = writer
        self.spec = spec
        self.report = report
        # the server answered (confirmation, failure or end): the header was parsed
        self.answered = asyncio.Event()
        self.aborted = False

    async def run(self) -> None:
        await run_both_ways(self.channel, [self._from_server(), self._to_server()],
                            self._abort, lambda: self.aborted)

    async def _from_server(self) -> None:
        while True:
            try:
                msg = await self.channel.read()
            except ChannelClosed as exc:
                log.debug("forwarded connection to %s ended: %s", self.spec.target_text, exc)
                self.answered.set()
                self._abort()
                return
            if msg is None:
                self.answered.set()
                with contextlib.suppress(OSError):
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                return
            if isinstance(msg, ChannelOpenConfirmation):
                self.answered.set()
            elif isinstance(msg, ChannelOpenFailure):
                self.answered.set()
                self.report(f"forwarding to {self.spec.target_text} failed: {msg.message}")
                self._abort()
                return
            elif isinstance(msg, ChannelData):
                if not msg.data:
                    continue
                try:
                    self.writer.writelines(self.channel.ready_data(msg.data))
                    await self.writer.drain()
                except OSError:
                    # the local side is gone: tell the server, as the reference does
                    self.channel.protocol.stop_channel(self.channel.channel_id,
                                                       STOP_SENDING_TCP_WRITE_FAILED)
                    self._abort()
                    return
            else:
                log.debug("forwarded connection: %s ignored", type(msg).__name__)

    async def _to_server(self) -> None:
        sent = False
        while True:
            try:
                data = await self.reader.read(TCP_READ_SIZE)
            except OSError:
                # reset, not closed: the channel is reset too (by _finish), not FINned
                self._abort()
                return
            if not data:
                if not sent:
                    # a FIN right behind the header breaks the reference's header
                    # parsing (§3.3): wait until the server has answered
                    await self.answered.wait()
                send_fin(self.channel)
                return
            try:
                await self.channel.write(data)
            except ChannelClosed:
                self._abort()
                return
            sent = True

    def _abort(self) -> None:
        self.aborted = True
        if not self.writer.transport.is_closing():
            self.writer.transport.abort()


# ---------------------------------------------------------------- UDP


@dataclass
class _Flow:
    source: Any
    channel: Channel
    last_activity: float
    answered: bool = False
    watcher: asyncio.Task[None] | None = None


class UdpForwarder(asyncio.DatagramProtocol):
    """A local UDP socket; one direct-udp channel per source address. Payloads that
    do not fit one QUIC datagram are dropped and counted; the forwarder goes on."""

    def __init__(self, conv: Conversation, spec: ForwardSpec, target: tuple[str, int],
                 report: Report = _log_report, idle_timeout: float = UDP_IDLE_TIMEOUT,
                 max_flows: int = MAX_UDP_FLOWS) -> None:
        self.conv = conv
        self.spec = spec
        self.target = target
        self.report = report
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.flows: OrderedDict[Any, _Flow] = OrderedDict()
        self.dropped = 0
        self.transport: asyncio.DatagramTransport | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._reported: set[str] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(
                lambda: self, local_addr=(self.spec.listen_host or "::", self.spec.listen_port))
        except OSError as exc:
            where = host_port(self.spec.listen_host or "*", self.spec.listen_port)
            raise ForwardError(f"cannot listen on UDP {where} for {self.spec.text!r}: "
                               f"{_os_reason(exc)}") from None
        self._expiry = asyncio.ensure_future(self._expire())
        log.info("forwarding UDP %s -> %s", self.spec.listen_port, host_port(*self.target))

    def get_port(self) -> int:
        """The local port listened on (the one picked when the spec asked for 0)."""
        assert self.transport is not None, "not started"
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP forwarder %s: %s", self.spec.text, exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.conv.ended.is_set():
            return
        flow = self.flows.get(addr)
        if flow is None:
            flow = self._open(addr)
        else:
            self.flows.move_to_end(addr)
        flow.last_activity = time.monotonic()
        # the header went out in open_channel(): this datagram follows it (Q10)
        if not self.conv.send_datagram(flow.channel.channel_id, data):
            self.dropped += 1
            limit = self.conv.protocol.connection.max_datagram_payload(
                self.conv.control_stream_id, flow.channel.channel_id)
            text = (f"-forward-udp {self.spec.text}: dropped a {len(data)}-byte datagram "
                    f"(one QUIC datagram carries at most {limit} bytes here)")
            if self.dropped == 1:
                self.report(text + "; further drops are counted silently")
            else:
                log.debug("%s; %d dropped so far", text, self.dropped)

    def _open(self, source: Any) -> _Flow:
        while len(self.flows) >= self.max_flows:
            _, oldest = self.flows.popitem(last=False)
            self._close_flow(oldest, "evicted: too many UDP flows")
        channel = self.conv.open_channel("direct-udp", address=self.target)
        flow = _Flow(source, channel, time.monotonic())
        self.flows[source] = flow
        self.conv.set_datagram_handler(channel.channel_id,
                                       lambda payload: self._reply(flow, payload))
        flow.watcher = asyncio.ensure_future(self._watch(flow))
        log.debug("UDP flow from %s on channel %d", source, channel.channel_id)
        return flow

    def _reply(self, flow: _Flow, payload: bytes) -> None:
        flow.last_activity = time.monotonic()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > UDP_SEND_BUFFER_LIMIT:  # type: ignore[attr-defined]
            return
        transport.sendto(payload, flow.source)

    async def _watch(self, flow: _Flow) -> None:
        """Nothing but the server's answer (and maybe its FIN) comes on the stream."""
        reason = "ended"
        try:
            while True:
                msg = await flow.channel.read()
                if msg is None:
                    reason = "closed by the server"
                    break
                flow.answered = True
                if isinstance(msg, ChannelOpenFailure):
                    reason = msg.message
                    text = f"forwarding to {self.spec.target_text} failed: {msg.message}"
                    if text not in self._reported and len(self._reported) < 16:
                        self._reported.add(text)  # once, not once per source port
                        self.report(text)
                    break
        except ChannelClosed as exc:
            reason = str(exc)
        flow.answered = True
        if self.flows.get(flow.source) is flow:
            del self.flows[flow.source]
            self._close_flow(flow, reason, from_watcher=True)

    def _close_flow(self, flow: _Flow, reason: str, from_watcher: bool = False) -> None:
        log.debug("UDP flow from %s (channel %d) closed: %s", flow.source,
                  flow.channel.channel_id, reason)
        self.conv.set_datagram_handler(flow.channel.channel_id, None)
        if flow.watcher is not None and not from_watcher:
            flow.watcher.cancel()
        channel = flow.channel
        if flow.answered and channel.error is None:
            # after the server's answer a FIN is safe for the reference too (§3.3)
            send_fin(channel)
        _finish(channel)

    async def _expire(self) -> None:
        step = max(0.05, min(5.0, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            for source, flow in list(self.flows.items()):
                if now - flow.last_activity >= self.idle_timeout:
                    del self.flows[source]
                    self._close_flow(flow, f"idle for {self.idle_timeout:.0f} s")

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        flows = list(self.flows.values())
        self.flows.clear()
        for flow in flows:
            self._close_flow(flow, "forwarder closed")
        if self.transport is not None:
            self.transport.close()
        watchers = [f.watcher for f in flows if f.watcher is not None]
        await asyncio.gather(*watchers, *(t for t in [self._expiry] if t),
                             return_exceptions=True)


