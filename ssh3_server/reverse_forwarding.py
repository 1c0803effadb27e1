"""Server side of remote forwarding (-R): `reverse-tcp-listen@ssh3-py` channels.

Our extension EXT_REVERSE_TCP (docs/extensions.md, "Remote forwarding"). A client
opens a listen channel naming a bind address and port; we check the policy, bind,
answer ChannelOpenConfirmation followed by `reverse-tcp-bound@ssh3-py` (the bound
port, the allocated one for port 0), and for each accepted TCP connection open a
`reverse-tcp@ssh3-py` channel towards the client, which connects to its target and
confirms (or refuses). The listener lives until the client ends the listen channel
(FIN or reset) or the conversation ends; a refusal is ChannelOpenFailure(code,
reason) then FIN, with a log line naming the user and the source address.

Only a client that announced EXT_REVERSE_TCP opens these channels, so the reference
client is never sent a server-initiated channel type it does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from ssh3.aio.channel import DEFAULT_MAX_PACKET_SIZE, Channel, ChannelClosed
from ssh3.aio.conversation import Conversation
from ssh3.aio.tcp_relay import TcpRelay, finish, send_fin
from ssh3.aio.tcp_relay import os_reason as _reason
from ssh3.messages import (
    REVERSE_TCP_CHANNEL_TYPE,
    ChannelHeader,
    ChannelOpenConfirmation,
    ChannelOpenFailure,
    ReverseTcpBoundRequest,
)

from .permissions import Permissions

log = logging.getLogger("ssh3.server.reverse")

# RFC 4254 §5.1 reason codes
OPEN_ADMINISTRATIVELY_PROHIBITED = 1
OPEN_CONNECT_FAILED = 2
# accepted connections relayed at once per listener: each holds a QUIC stream the
# client grants (about 100 by default); beyond this a new connection is closed
MAX_CONNECTIONS_PER_LISTENER = 64
# how long the client may take to connect to its target and answer
ANSWER_TIMEOUT = 30.0
LISTEN_BACKLOG = 128


@dataclass
class ReverseContext:
    """Who asked (for the policy and the log lines) and what the server allows."""

    user: str
    uid: int
    peer: str  # "ip port" of the client
    permissions: Permissions = field(default_factory=Permissions)
    gateway_ports: bool = False  # -gateway-ports: bind addresses other than loopback


def listen_hosts(bind: str, gateway_ports: bool) -> list[str]:
    """The addresses to bind for a requested bind address, like sshd: without
    GatewayPorts every listener is on loopback; with it "*" (or "") means every
    interface, and "localhost" still means loopback. The first address is required,
    the others are bound on the same port when they can be (IPv6 may be absent)."""
    wild = bind in ("", "*")
    if not gateway_ports or bind.lower() == "localhost":
        if bind in ("127.0.0.1", "::1"):
            return [bind]
        return ["127.0.0.1", "::1"]
    if wild:
        return ["0.0.0.0", "::"]
    return [bind]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _bind(hosts: list[str], port: int) -> list[socket.socket]:
    """Listening sockets on `hosts`, all on one port (the first's, when 0 is asked
    for). Raises OSError if the first cannot be bound."""
    sockets: list[socket.socket] = []
    try:
        for index, host in enumerate(hosts):
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
            except socket.gaierror:
                if index == 0:
                    raise
                continue
            family, _type, proto, _name, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    # "::" next to "0.0.0.0" on the same port: IPv6 only
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(sockaddr)
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
            except OSError:
                sock.close()
                if index == 0:
                    raise
                log.debug("reverse listener: %s port %d not bound too", host, port)
                continue
            sockets.append(sock)
            port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _refuse(channel: Channel, code: int, text: str) -> None:
    with contextlib.suppress(ChannelClosed):
        channel.send(ChannelOpenFailure(code, text, "en"))
        send_fin(channel)


def _policy_refusal(bind: str, port: int, ctx: ReverseContext) -> str | None:
    """Why this listen request is refused, or None."""
    if not ctx.permissions.allow_remote_forwarding:
        return "remote forwarding is disabled on this server"
    if not ctx.permissions.permits_listen(bind, port):
        return f"listening on {_where(bind, port)} is not permitted for this key"
    if 0 < port < 1024 and ctx.uid != 0:
        return f"port {port} is privileged: only root may listen on it"
    return None


async def serve_listen_channel(conv: Conversation, channel: Channel,
                               ctx: ReverseContext) -> None:
    """Serve one reverse-tcp-listen channel to its end."""
    task = asyncio.current_task()
    track = getattr(conv, "track", None)
    if track is not None and task is not None:
        track(task)  # ForwardingConversation: cancelled when the conversation ends
    elif task is not None:
        conv.add_end_callback(lambda _c: task.cancel())
    listener: _Listener | None = None
    try:
        assert channel.header.address is not None  # the header parser requires one
        bind, port = channel.header.address
        where = _where(bind, port)
        refusal = _policy_refusal(bind, port, ctx)
        if refusal is not None:
            log.warning("remote forward listen on %s for %s from %s refused: %s", where,
                        ctx.user, ctx.peer, refusal)
            _refuse(channel, OPEN_ADMINISTRATIVELY_PROHIBITED,
                    f"administratively prohibited: {refusal}")
            return
        hosts = listen_hosts(bind, ctx.gateway_ports)
        if not ctx.gateway_ports and not _is_loopback(bind):
            log.info("remote forward %s for %s: bound to loopback (-gateway-ports is off)",
                     where, ctx.user)
        try:
            sockets = _bind(hosts, port)
        except OSError as exc:
            reason = _reason(exc)
            log.warning("remote forward listen on %s for %s from %s failed: %s", where,
                        ctx.user, ctx.peer, reason)
            _refuse(channel, OPEN_CONNECT_FAILED, f"cannot listen on {where}: {reason}")
            return
        listener = _Listener(conv, channel, ctx)
        await listener.start(sockets)
        bound = sockets[0].getsockname()[1]
        channel.send(ChannelOpenConfirmation(DEFAULT_MAX_PACKET_SIZE))
        channel.send(ReverseTcpBoundRequest(bound))
        log.info("remote forward for %s from %s: listening on %s (channel %d)", ctx.user,
                 ctx.peer, ", ".join(_where(s.getsockname()[0], bound) for s in sockets),
                 channel.channel_id)
        ended = await _wait_end(channel)
        log.info("remote forward on port %d for %s ended: %s", bound, ctx.user, ended)
        listener.close()  # before the FIN: once the client sees it, the port is closed
        send_fin(channel)
    except ChannelClosed:
        pass
    except Exception:
        log.exception("reverse-tcp-listen channel %d for %s from %s failed",
                      channel.channel_id, ctx.user, ctx.peer)
    finally:
        if listener is not None:
            listener.close()
        finish(channel)


async def _wait_end(channel: Channel) -> str:
    """The client sends nothing on a listen channel but its end."""
    while True:
        try:
            msg = await channel.read()
        except ChannelClosed as exc:
            return str(exc)
        if msg is None:
            return "cancelled by the client"
        log.debug("reverse-tcp-listen channel %d: %s ignored", channel.channel_id,
                  type(msg).__name__)


class _Listener:
    """The accepting sockets of one listen channel and the connections they relay."""

    def __init__(self, conv: Conversation, channel: Channel, ctx: ReverseContext) -> None:
        self.conv = conv
        self.channel = channel
        self.ctx = ctx
        self.servers: list[asyncio.AbstractServer] = []
        self.connections: set[asyncio.Task[None]] = set()

    async def start(self, sockets: list[socket.socket]) -> None:
        try:
            for sock in sockets:
                self.servers.append(await asyncio.start_server(self._accepted, sock=sock))
        except BaseException:
            for sock in sockets:
                sock.close()
            self.close()
            raise

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.conv.ended.is_set() or len(self.connections) >= MAX_CONNECTIONS_PER_LISTENER:
            log.warning("remote forward channel %d for %s: connection from %s closed (%s)",
                        self.channel.channel_id, self.ctx.user,
                        writer.get_extra_info("peername"),
                        "conversation ended" if self.conv.ended.is_set()
                        else f"{MAX_CONNECTIONS_PER_LISTENER} connections already")
            writer.transport.abort()
            return
        task = asyncio.ensure_future(self._relay(reader, writer))
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)
        track = getattr(self.conv, "track", None)
        if track is not None:
            track(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer: Any = writer.get_extra_info("peername") or ("?", 0)
        host = str(peer[0])
        if host.startswith("::ffff:"):
            host = host[7:]
        header = ChannelHeader(self.conv.control_stream_id, REVERSE_TCP_CHANNEL_TYPE,
                               DEFAULT_MAX_PACKET_SIZE, (host, int(peer[1])),
                               listener_id=self.channel.channel_id)
        channel = self.conv.protocol.open_channel(self.conv, header)
        label = f"reverse-tcp channel {channel.channel_id} from {_where(host, int(peer[1]))}"
        try:
            try:
                answer = await asyncio.wait_for(channel.read(), ANSWER_TIMEOUT)
            except (ChannelClosed, TimeoutError) as exc:
                log.info("%s: no answer from the client: %s", label, exc or "timed out")
                writer.transport.abort()
                return
            if isinstance(answer, ChannelOpenFailure):
                log.info("%s: the client refused: %s", label, answer.message)
                writer.transport.abort()
                return
            if not isinstance(answer, ChannelOpenConfirmation):
                log.info("%s: the client answered %s", label,
                         type(answer).__name__ if answer else "with its end")
                writer.transport.abort()
                return
            log.debug("%s: relaying for %s", label, self.ctx.user)
            await TcpRelay(channel, reader, writer, label).run()
        finally:
            if not writer.transport.is_closing():
                writer.transport.abort()
            finish(channel)

    def close(self) -> None:
        """Stop accepting. Connections already relayed go on until they end or the
        conversation does (as with OpenSSH's cancel-tcpip-forward)."""
        for server in self.servers:
            server.close()
        self.servers.clear()
