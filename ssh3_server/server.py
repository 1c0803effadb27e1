"""The ssh3 server: QUIC listener, secret-path routing, authentication, conversations."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qs, unquote, urlsplit

from ssh3.aio.channel import DEFAULT_MAX_PACKET_SIZE, Channel
from ssh3.aio.conversation import Conversation
from ssh3.aio.protocol import ProtocolHandler, SSH3Protocol, protocol_factory
from ssh3.backends import Backend, get_backend
from ssh3.connection import (
    EXT_EARLY_CHANNELS,
    H3_NO_ERROR,
    H3_REQUEST_INCOMPLETE,
    OUR_EXTENSIONS,
    RequestReceived,
)
from ssh3.messages import (
    REVERSE_LISTEN_CHANNEL_TYPE,
    ChannelOpenConfirmation,
    ChannelOpenFailure,
)
from ssh3.version import OUR_VERSION, is_supported, parse_version, unsupported_version_body

from .authenticate import Authenticator, AuthSettings
from .forwarding import (
    FORWARD_TYPES,
    ForwardContext,
    ForwardingConversation,
    ForwardingPolicy,
    serve_forward_channel,
)
from .heap import HeapTrimmer
from .hooks import LoginAttempt, ServerHooks, SessionInfo, authenticate, call, forward_permitted
from .penalties import PenaltyBox, PenaltyPolicy
from .permissions import Permissions
from .reverse_forwarding import ReverseContext, serve_listen_channel
from .sessions import Session, SessionContext, default_subsystems

log = logging.getLogger("ssh3.server")
audit = logging.getLogger("ssh3.auth")

NOT_FOUND_BODY = b"404 page not found\n"
MAX_DATAGRAM_FRAME_SIZE = 16383  # as the reference advertises


@dataclass
class ServerConfig:
    bind_host: str = "::"
    bind_port: int = 443
    url_path: str = "/ssh3-term"
    cert_path: str = "./cert.pem"
    key_path: str = "./priv.key"
    backend: str | None = None
    idle_timeout: float = 30.0
    enable_password_login: bool = False
    penalties: PenaltyPolicy = field(default_factory=PenaltyPolicy)
    max_auth_tries: int = 6  # failed attempts on one connection before it is closed
    login_grace_time: float = 120.0  # seconds a connection may stay unauthenticated
    max_unauthenticated: int = 100  # connections not yet authenticated, at once
    # sshd-style AuthorizedKeysFile patterns; None: the reference's two files
    authorized_keys_files: list[str] | None = None
    oidc_ca_file: str | None = None  # -oidc-ca-file: CA bundle for OIDC fetches
    # -disable-tcp-forwarding / -disable-udp-forwarding refuse direct-tcp / direct-udp
    allow_tcp_forwarding: bool = True
    allow_udp_forwarding: bool = True
    # -disable-agent-forwarding: `forward-agent` is ignored (with a log line)
    allow_agent_forwarding: bool = True
    # -permit-user-environment: honour authorized_keys environment= (sshd's
    # PermitUserEnvironment); -trusted-user-ca-keys FILE (sshd's TrustedUserCAKeys)
    permit_user_environment: bool = False
    trusted_user_ca_keys: str | None = None
    # -disable-remote-forwarding refuses -R; -gateway-ports lets -R bind non-loopback
    allow_remote_forwarding: bool = True
    gateway_ports: bool = False
    # -subsystem NAME=COMMAND; by default sftp → the system's sftp-server if present
    subsystems: dict[str, str] = field(default_factory=default_subsystems)
    # -accept-env: names a client may set with `env` (EXT_ENV)
    accept_env: tuple[str, ...] = ("LANG", "LC_*")
    # -extensions-mask: the extension bits announced (fewer: behave like an older peer)
    extensions: int = OUR_EXTENSIONS | EXT_EARLY_CHANNELS


Headers = list[tuple[bytes, bytes]]


def _date() -> bytes:
    return formatdate(usegmt=True).encode()


class SSH3Server(ProtocolHandler):
    def __init__(self, config: ServerConfig, hooks: ServerHooks | None = None) -> None:
        self.config = config
        self.hooks = hooks or ServerHooks()  # defaults: today's behaviour
        self.extensions = config.extensions  # read by SSH3Protocol.setup
        # EXT_EARLY_CHANNELS: hold channels sent before the 200 (unless masked)
        self.early_channels = bool(config.extensions & EXT_EARLY_CHANNELS)
        self.backend: Backend = get_backend(config.backend)
        self._server: object | None = None
        self._tickets: dict[bytes, object] = {}
        self._conversations: set[Conversation] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._running_as_root = os.geteuid() == 0
        self._own_user = pwd.getpwuid(os.geteuid()).pw_name
        self.address: tuple[str, int] | None = None
        self.penalties = PenaltyBox(config.penalties)
        self._heap = HeapTrimmer()  # freed conversations' memory back to the system
        self._unauthenticated: dict[SSH3Protocol, asyncio.TimerHandle] = {}
        self.authenticator = Authenticator(
            AuthSettings(enable_password_login=config.enable_password_login,
                         authorized_keys_files=config.authorized_keys_files,
                         oidc_ca_file=config.oidc_ca_file,
                         permit_user_environment=config.permit_user_environment,
                         trusted_user_ca_keys=config.trusted_user_ca_keys),
            self.penalties, self.base_permissions(), self._running_as_root, self._own_user)

    def base_permissions(self) -> Permissions:
        """What the server's flags allow every login."""
        return Permissions(allow_agent_forwarding=self.config.allow_agent_forwarding,
                           allow_tcp_forwarding=self.config.allow_tcp_forwarding,
                           allow_udp_forwarding=self.config.allow_udp_forwarding,
                           allow_remote_forwarding=self.config.allow_remote_forwarding,
                           accept_env=self.config.accept_env)

    # ------------------------------------------------------------ lifecycle

    def _quic_configuration(self) -> object:
        cfg = self.backend.configuration_class(
            is_client=False,
            alpn_protocols=["h3"],
            max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
            idle_timeout=self.config.idle_timeout,
        )
        cfg.max_stream_data = 16 << 20
        cfg.max_data = 32 << 20
        cfg.load_cert_chain(self.config.cert_path, self.config.key_path)
        return cfg

    async def start(self) -> tuple[str, int]:
        self._server = await self.backend.serve(
            self.config.bind_host,
            self.config.bind_port,
            configuration=self._quic_configuration(),
            create_protocol=protocol_factory(self.backend, self),
            session_ticket_fetcher=lambda label: self._tickets.pop(label, None),
            session_ticket_handler=self._store_ticket,
        )
        transport = self._server._transport  # type: ignore[attr-defined]
        sockname = transport.get_extra_info("sockname")
        self.address = (sockname[0], sockname[1])
        log.info("listening on %s port %d (QUIC backend %s), secret path %s",
                 sockname[0], sockname[1], self.backend.name, "<hidden>")
        return self.address

    def _store_ticket(self, ticket: object) -> None:
        # tickets let clients resume; a request sent in 0-RTT is refused with 425
        if len(self._tickets) > 10000:
            self._tickets.clear()
        self._tickets[ticket.ticket] = ticket  # type: ignore[attr-defined]

    async def close(self) -> None:
        for conv in list(self._conversations):
            conv.close("server shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._heap.cancel()
        if self._server is not None:
            self._server.close()  # type: ignore[attr-defined]

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ requests

    def request_received(self, protocol: SSH3Protocol, event: RequestReceived) -> None:
        pseudo: dict[bytes, bytes] = {}
        regular: dict[bytes, bytes] = {}
        for name, value in event.headers:
            (pseudo if name.startswith(b":") else regular).setdefault(name, value)
        target = pseudo.get(b":path", b"").decode("utf-8", "replace")
        path = urlsplit(target).path if target else ""
        if not self._path_matches(path) or pseudo.get(b":method") != b"CONNECT" \
                or pseudo.get(b":protocol") != b"ssh3":
            self._respond_not_found(protocol, event)
            return
        protocol.expect_early_channels(event.stream_id)
        self._spawn(self._handle_connect(protocol, event, target, regular))

    def _path_matches(self, path: str) -> bool:
        want = self.config.url_path
        if want.endswith("/"):
            return path.startswith(want)
        return path == want

    def _respond_not_found(self, protocol: SSH3Protocol, event: RequestReceived) -> None:
        # byte for byte what Go's http.NotFound sends: nothing hints at SSH3
        conn = protocol.connection
        conn.send_headers(event.stream_id, [
            (b":status", b"404"),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"x-content-type-options", b"nosniff"),
            (b"date", _date()),
            (b"content-length", str(len(NOT_FOUND_BODY)).encode()),
        ])
        conn.send_http_data(event.stream_id, NOT_FOUND_BODY, end_stream=True)
        if not event.stream_ended:
            conn.stop_stream(event.stream_id, H3_NO_ERROR)
        protocol.transmit_soon()

    def _respond(self, protocol: SSH3Protocol, event: RequestReceived, status: int,
                 body: bytes = b"", end: bool = True) -> None:
        conn = protocol.connection
        headers: Headers = [(b":status", str(status).encode()),
                            (b"server", str(OUR_VERSION).encode()),
                            (b"date", _date())]
        if body:
            headers += [(b"content-type", b"text/plain; charset=utf-8"),
                        (b"x-content-type-options", b"nosniff"),
                        (b"content-length", str(len(body)).encode())]
        conn.send_headers(event.stream_id, headers, end_stream=end and not body)
        if body:
            conn.send_http_data(event.stream_id, body, end_stream=end)
        if end and not event.stream_ended:
            conn.stop_stream(event.stream_id, H3_NO_ERROR)
        protocol.transmit_soon()

    async def _handle_connect(self, protocol: SSH3Protocol, event: RequestReceived,
                              target: str, headers: dict[bytes, bytes]) -> None:
        try:
            await self._connect(protocol, event, target, headers)
        finally:
            # not released to a conversation: nothing of the early channels runs
            protocol.discard_early_channels(event.stream_id, "the CONNECT was refused")

    async def _connect(self, protocol: SSH3Protocol, event: RequestReceived,
                       target: str, headers: dict[bytes, bytes]) -> None:
        peer = protocol._peer_text()
        agent = headers.get(b"user-agent", b"").decode("utf-8", "replace")
        try:
            version = parse_version(agent)
        except ValueError:
            log.info("request from %s with an invalid version %r: 403", peer, agent[:100])
            self._respond(protocol, event, 403,
                          f"Invalid version: {agent[:100]}\n".encode())
            return
        if not is_supported(version):
            log.info("request from %s with unsupported version %r: 403", peer, agent[:100])
            self._respond(protocol, event, 403, unsupported_version_body(version).encode())
            return
        if event.early:
            log.info("request from %s arrived in 0-RTT: 425", peer)
            self._respond(protocol, event, 425)
            return
        conv_id = protocol.connection.conversation_id
        if conv_id is None:
            self._respond(protocol, event, 500)
            return
        query = parse_qs(urlsplit(target).query)
        username = unquote(query.get("user", [""])[0])
        host = protocol.remote_address[0] if protocol.remote_address else ""
        protocol.ssh3_attempted = True  # type: ignore[attr-defined]
        left = self.penalties.remaining(host)
        if left:
            audit.info("auth refused from %s user=%r: source penalised for %.0f more s "
                       "(no credential checked)", peer, username, left)
            self._respond(protocol, event, 401)
            return
        login = await authenticate(self.hooks, LoginAttempt(
            self, username, conv_id, headers.get(b"authorization", b""), peer, host))
        if login is None:
            self._respond(protocol, event, 401)
            failures = getattr(protocol, "auth_failures", 0) + 1
            protocol.auth_failures = failures  # type: ignore[attr-defined]
            if failures >= self.config.max_auth_tries:
                audit.info("closing connection from %s: %d failed authentications", peer,
                           failures)
                protocol.close_connection(H3_NO_ERROR, "too many authentication failures")
            return
        self._authenticated(protocol)
        user = login.user
        if protocol.terminated.is_set():
            return
        # keeps datagrams that overtake their direct-udp channel (Q10)
        conv = ForwardingConversation(protocol, event.stream_id)
        self._conversations.add(conv)
        conv.add_end_callback(self._conversations.discard)
        ctx = SessionContext(
            user=user,
            switch_user=self._running_as_root and user.uid != os.geteuid(),
            peer=_addr_text(protocol.remote_address),
            local=_addr_text(self.address),
            extensions_of_peer=lambda: protocol.connection.peer_extensions,
            end_conversation=conv.close,
            conversation=conv,
            permissions=login.permissions,
            subsystems=self.config.subsystems,
        )
        conv.on_channel = lambda channel: self._spawn(self._serve_channel(conv, channel, ctx))
        self._respond(protocol, event, 200, end=False)
        log.info("conversation %d for %s from %s started", event.stream_id, user.name, peer)
        info = SessionInfo(user.name, ctx.peer, ctx.local, event.stream_id, login.method,
                           login.fingerprint)
        call(self.hooks.session_started, info)
        protocol.release_early_channels(conv)
        conv.add_end_callback(
            lambda c: log.info("conversation %d for %s ended: %s", c.control_stream_id,
                               user.name, c.end_reason))
        conv.add_end_callback(
            lambda c: call(self.hooks.session_ended, info, c.end_reason or "ended"))

    # ------------------------------------------------------------ channels

    async def _serve_channel(self, conv: Conversation, channel: Channel,
                             ctx: SessionContext) -> None:
        if channel.channel_type in FORWARD_TYPES:
            if not forward_permitted(self.hooks, channel, ctx.user.name, ctx.peer,
                                     ctx.permissions):
                return
            await serve_forward_channel(
                conv, channel,
                ForwardContext(ctx.user.name, ctx.peer, lambda: ctx.peer_extensions != 0),
                ForwardingPolicy(allow_tcp=self.config.allow_tcp_forwarding,
                                 allow_udp=self.config.allow_udp_forwarding,
                                 permissions=ctx.permissions))
            return
        if channel.channel_type == REVERSE_LISTEN_CHANNEL_TYPE:
            await serve_listen_channel(conv, channel, ReverseContext(
                ctx.user.name, ctx.user.uid, ctx.peer, ctx.permissions,
                self.config.gateway_ports))
            return
        if channel.channel_type == "session":
            # like the reference, confirm as we accept (the opener does not wait)
            channel.send(ChannelOpenConfirmation(DEFAULT_MAX_PACKET_SIZE))
            session = Session(channel, ctx)
            task = asyncio.current_task()
            conv.add_end_callback(lambda _c: task.cancel() if task else None)
            try:
                await session.run()
            except asyncio.CancelledError:
                await session.terminate()
            finally:
                channel.protocol.forget_channel(channel.channel_id)
            return
        log.info("channel %d: type %r refused (not supported)", channel.channel_id,
                 channel.channel_type)
        try:
            channel.send(ChannelOpenFailure(
                3, f"channel type {channel.channel_type} not supported"))
            channel.send_eof()
        except Exception:  # noqa: BLE001 - the channel may already be gone
            channel.reset(H3_REQUEST_INCOMPLETE)
        channel.protocol.forget_channel(channel.channel_id)

    # ------------------------------------------------------------ connections

    def connection_started(self, protocol: SSH3Protocol) -> None:
        if len(self._unauthenticated) >= self.config.max_unauthenticated:
            log.warning("refusing a connection: %d connections are not authenticated yet",
                        len(self._unauthenticated))
            asyncio.get_running_loop().call_soon(protocol.close_connection, H3_NO_ERROR,
                                                 "too many unauthenticated connections")
            return
        timer = asyncio.get_running_loop().call_later(
            self.config.login_grace_time, self._grace_expired, protocol)
        self._unauthenticated[protocol] = timer

    def _authenticated(self, protocol: SSH3Protocol) -> None:
        timer = self._unauthenticated.pop(protocol, None)
        if timer is not None:
            timer.cancel()

    def _grace_expired(self, protocol: SSH3Protocol) -> None:
        if self._unauthenticated.pop(protocol, None) is None:
            return
        log.info("closing connection from %s: not authenticated within %.0f s",
                 protocol._peer_text(), self.config.login_grace_time)
        if protocol.remote_address and getattr(protocol, "ssh3_attempted", False):
            self.penalties.penalise(protocol.remote_address[0], "grace_exceeded")
        protocol.close_connection(H3_NO_ERROR, "authentication timeout")

    def connection_lost(self, protocol: SSH3Protocol) -> None:
        timer = self._unauthenticated.pop(protocol, None)
        if timer is not None:
            timer.cancel()
            # only connections that tried the secret path: a scanner's 404s say nothing
            if protocol.remote_address and getattr(protocol, "ssh3_attempted", False):
                self.penalties.penalise(protocol.remote_address[0], "noauth")
        log.debug("connection from %s closed", protocol._peer_text())
        self._heap.schedule()


def _addr_text(addr: object) -> str:
    if not addr:
        return "? 0"
    host, port = addr[0], addr[1]  # type: ignore[index]
    if host.startswith("::ffff:"):
        host = host[7:]
    return f"{host} {port}"
