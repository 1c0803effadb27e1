"""Client side of the driver: QUIC connect, the CONNECT request, authentication.

No printing and no prompting here: decisions that need a user (an unknown server
certificate) go through callbacks the caller supplies.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from ..auth.jwt_token import build_token
from ..backends import Backend, get_backend
from ..connection import (
    EXT_EARLY_CHANNELS,
    ConnectionTerminated,
    HttpDataReceived,
    HttpStreamReset,
    ResponseReceived,
)
from ..version import OUR_VERSION, Version, parse_version, pick_retry_version
from . import jump
from .conversation import Conversation
from .early_client import SETTINGS_WAIT, EarlyOpener, drop_early, open_early
from .protocol import ProtocolHandler, SSH3Protocol, protocol_factory
from .udp_connect import connect_from

log = logging.getLogger("ssh3.client")

MAX_DATAGRAM_FRAME_SIZE = 16383


class SSH3ClientError(Exception):
    """A failure the user must see; `exit_code` is what the program exits with."""

    exit_code = 255


class ServerNotFound(SSH3ClientError):
    pass


class AuthenticationFailed(SSH3ClientError):
    pass


class VersionRefused(SSH3ClientError):
    pass


class HostKeyError(SSH3ClientError):
    pass


class ConnectTimeout(SSH3ClientError):
    """No QUIC answer within `ConnectParams.connect_timeout` (UDP dropped?)."""


class ConnectionRefused(SSH3ClientError):
    """ICMP port unreachable: nothing listens on that UDP port."""


class IdentityUnavailable(Exception):
    """Raised by `Identity.make_authorization` when that identity cannot be used
    after all (no passphrase, the agent refused...): `establish` skips it."""


@dataclass
class Identity:
    """A way to fill the Authorization header for a given conversation ID.

    `make_authorization(user, conversation_id)` is called only when the identity
    is tried; it may return an awaitable (it can prompt or ask an agent) and may
    raise `IdentityUnavailable` to be skipped.
    """

    label: str
    make_authorization: Callable[[str, bytes], str | Awaitable[str]]


def private_key_identity(label: str, private_key: Any) -> Identity:
    def make(user: str, conversation_id: bytes) -> str:
        return "Bearer " + build_token(private_key, user, conversation_id, backdate=2)

    return Identity(label, make)


@dataclass
class ConnectParams:
    host: str  # what to dial (after HostName substitution)
    port: int
    path: str
    user: str
    identities: list[Identity]
    backend: str | None = None
    insecure: bool = False
    server_name: str | None = None
    # called with the server's leaf certificate and the rest of its chain (DER) after
    # the handshake and before any credential is sent; raise HostKeyError to refuse
    verify_certificate: Callable[[bytes, list[bytes]], Awaitable[None]] | None = None
    # the QUIC handshake's limit (OpenSSH's ConnectTimeout); None: no limit
    connect_timeout: float | None = 15.0
    idle_timeout: float = 30.0
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # proxy jump: the conversation with the jump host whose direct-udp channel
    # carries this connection (ssh3/aio/udp_tunnel.py), and its name for messages
    via: Conversation | None = None
    via_label: str = ""
    # the UDP payload size of our packets (a jump hop needs room for inner packets)
    max_datagram_size: int | None = None
    # the local address to send from (OpenSSH's -b / BindAddress); None: any
    bind_address: str | None = None


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    stream_id: int

    @property
    def server_version(self) -> Version | None:
        try:
            return parse_version(self.headers.get(b"server", b"").decode("utf-8", "replace"))
        except ValueError:
            return None


class _ClientHandler(ProtocolHandler):
    def request_received(self, protocol: SSH3Protocol, event: Any) -> None:
        return None


def authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def quic_configuration(backend: Backend, params: ConnectParams) -> Any:
    cfg = backend.configuration_class(
        is_client=True,
        alpn_protocols=["h3"],
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
        idle_timeout=params.idle_timeout,
        server_name=params.server_name or params.host,
    )
    # verification happens after the handshake against known_hosts (we pin the
    # exact certificate, stricter than the reference) and before credentials leave
    cfg.verify_mode = ssl.CERT_NONE
    if params.via is not None:
        jump.configure_inner(cfg)
    if params.max_datagram_size:
        cfg.max_datagram_size = params.max_datagram_size
    cfg.max_stream_data = 16 << 20
    cfg.max_data = 32 << 20
    backend.configure_client(cfg)
    return cfg


@contextlib.asynccontextmanager
async def open_connection(params: ConnectParams) -> AsyncIterator[SSH3Protocol]:
    """A QUIC connection whose handshake is done and whose certificate passed
    `params.verify_certificate`."""
    backend = get_backend(params.backend)
    cfg = quic_configuration(backend, params)
    create = protocol_factory(backend, _ClientHandler())
    if params.via is not None:
        cm = jump.connect_via(backend, params, cfg, create)
    elif params.bind_address:
        cm = connect_from(backend, params.bind_address, params.host, params.port,
                          configuration=cfg, create_protocol=create)
    else:
        cm = backend.connect(params.host, params.port, configuration=cfg,
                             create_protocol=create, wait_connected=True)
    where = f"connect to host {params.host} port {params.port}"
    try:
        protocol = await asyncio.wait_for(cm.__aenter__(), params.connect_timeout)
    except jump.TunnelError as exc:
        raise SSH3ClientError(str(exc)) from exc
    except TimeoutError as exc:
        if params.via is not None:
            raise SSH3ClientError(jump.timeout_message(params)) from exc
        # QUIC has no SYN/RST: silence is all a firewall dropping UDP leaves us
        raise ConnectTimeout(
            f"{where}: no answer over UDP/QUIC within {params.connect_timeout:g} s "
            "(is UDP blocked? is an SSH3 server running there? -o ConnectTimeout=N "
            "waits longer)") from exc
    except ConnectionRefusedError as exc:
        # ICMP port unreachable on our connected socket (ssh3/aio/protocol.py)
        raise ConnectionRefused(f"{where}: Connection refused") from exc
    except ConnectionError as exc:
        raise SSH3ClientError(f"{where}: QUIC handshake failed: {exc or 'refused'}") from exc
    except socket.gaierror as exc:
        raise SSH3ClientError(
            f"Could not resolve hostname {params.host}: {exc.strerror}") from exc
    except OSError as exc:
        raise SSH3ClientError(f"{where}: {exc.strerror or exc}") from exc
    try:
        if params.verify_certificate is not None and not params.insecure:
            der = backend.peer_certificate_der(protocol._quic)
            if der is None:
                raise HostKeyError("the server presented no certificate")
            await params.verify_certificate(der, backend.peer_chain_der(protocol._quic))
        yield protocol
    finally:
        protocol.close_now()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(cm.__aexit__(None, None, None), 2.0)


def start_connect(protocol: SSH3Protocol, params: ConnectParams, authorization: str,
                  version: Version = OUR_VERSION) -> int:
    """Send one CONNECT request's headers; returns its stream ID (the control stream
    ID of the conversation it will open)."""
    headers = [
        (b":method", b"CONNECT"),
        (b":protocol", b"ssh3"),
        (b":scheme", b"https"),
        (b":authority", authority(params.host, params.port).encode()),
        (b":path", (params.path + "?" + urlencode({"user": params.user})).encode()),
        (b"authorization", authorization.encode()),
        (b"user-agent", str(version).encode()),
        *params.extra_headers,
    ]
    sid = protocol.connection.send_request(headers)
    protocol.http_events(sid)
    protocol.transmit_soon()
    return sid


async def send_connect(protocol: SSH3Protocol, params: ConnectParams, authorization: str,
                       version: Version = OUR_VERSION, timeout: float = 15.0) -> Response:
    """One CONNECT request; returns the response (body read only when the server
    ends the stream: a 401 from the reference stays open, Q13)."""
    sid = start_connect(protocol, params, authorization, version)
    return await read_response(protocol, sid, timeout)


async def read_response(protocol: SSH3Protocol, sid: int, timeout: float = 15.0) -> Response:
    """The response to the CONNECT sent on stream `sid`."""
    queue = protocol.http_events(sid)

    async def next_event(wait: float) -> Any:
        try:
            return await asyncio.wait_for(queue.get(), wait)
        except TimeoutError:
            return None

    status = 0
    resp_headers: dict[bytes, bytes] = {}
    body = b""
    try:
        ev = await next_event(timeout)
        if ev is None:
            raise SSH3ClientError(f"the server did not answer the request within "
                                  f"{timeout:.0f} s")
        if isinstance(ev, HttpStreamReset):
            raise SSH3ClientError(f"the server reset the request (code {ev.error_code:#x})")
        if isinstance(ev, ConnectionTerminated):
            raise SSH3ClientError(f"the connection closed during the request "
                                  f"({ev.error_code:#x} {ev.reason})")
        if isinstance(ev, ResponseReceived):
            resp_headers = dict(ev.headers)
            try:
                status = int(resp_headers.get(b":status", b"0"))
            except ValueError:
                status = 0
            ended = ev.stream_ended
            # an error body is short; a 401 from the reference never ends (Q13)
            while not ended and status not in (200, 401) and len(body) <= 65536:
                ev = await next_event(1.0)
                if not isinstance(ev, HttpDataReceived):
                    break
                body += ev.data
                ended = ev.stream_ended
    finally:
        if status != 200:
            protocol.forget_http(sid)
    return Response(status, resp_headers, body, sid)


KEEPALIVE_INTERVAL = 10.0  # while an identity is being prepared (a passphrase prompt)


async def _prepare(protocol: SSH3Protocol, identity: Identity, user: str,
                   conv_id: bytes) -> str:
    """The identity's Authorization value; PINGs keep the connection from idling
    out (30 s) while a slow preparation (a human typing a passphrase) runs."""
    result = identity.make_authorization(user, conv_id)
    if not inspect.isawaitable(result):
        return result
    task = asyncio.ensure_future(result)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_INTERVAL)
            if done:
                return task.result()
            protocol._quic.send_ping(0)
            protocol.transmit()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def establish(protocol: SSH3Protocol, params: ConnectParams,
                    early: EarlyOpener | None = None) -> Conversation:
    """Authenticate with each identity in turn; return the conversation on 200.

    `early(conv)`: opens the conversation's channels. When the server announced
    EXT_EARLY_CHANNELS it is called right behind each CONNECT, before the answer (the
    server holds those channels until authentication ends: one round trip saved);
    on a refusal they are dropped and the next attempt calls it again. Without the
    extension (the reference) `early` is not called: the caller opens its channels
    after the 200, as usual."""
    conv_id = protocol.connection.conversation_id
    if conv_id is None:
        raise SSH3ClientError("the TLS exporter is unavailable (handshake incomplete)")
    if early is not None:
        await wait_settings(protocol, SETTINGS_WAIT)
        if not protocol.connection.peer_extensions & EXT_EARLY_CHANNELS:
            early = None
    tried: list[str] = []
    skipped: list[str] = []
    for identity in params.identities:
        try:
            authorization = await _prepare(protocol, identity, params.user, conv_id)
        except IdentityUnavailable as exc:
            log.debug("identity %s skipped: %s", identity.label, exc)
            skipped.append(identity.label)
            continue
        version = OUR_VERSION
        for _attempt in range(5):
            early_conv = None
            if early is None:
                response = await send_connect(protocol, params, authorization, version)
            else:
                sid = start_connect(protocol, params, authorization, version)
                early_conv = open_early(protocol, sid, early)
                response = await read_response(protocol, sid)
                if response.status != 200:
                    drop_early(early_conv, f"the server answered {response.status}")
            if response.status != 403:
                break
            server = response.server_version
            retry = pick_retry_version(server) if server is not None else None
            if retry is None or retry == version:
                raise VersionRefused(version_refused_message(response, version))
            log.debug("server refused %s; retrying as %s", version, retry)
            version = retry
        tried.append(_tried_label(identity.label, authorization))
        if response.status == 200:
            if response.server_version is None:
                log.warning("the server sent no valid version string")
            conv = early_conv or Conversation(protocol, response.stream_id)
            protocol.forget_http(response.stream_id)
            return conv
        if response.status == 401:
            log.debug("identity %s refused", identity.label)
            continue
        if response.status == 404:
            raise ServerNotFound(
                f"no SSH3 server at https://{authority(params.host, params.port)}{params.path} "
                "(404): check the URL path (-url-path / URLPath): it must be the server's "
                "-url-path")
        if response.status == 425:
            raise SSH3ClientError("the server refused a request sent as early data (425)")
        raise SSH3ClientError(
            f"unexpected HTTP status {response.status} from the server: "
            f"{response.body.decode('utf-8', 'replace').strip()}")
    if not tried and skipped:
        raise AuthenticationFailed(
            f"no usable identity to authenticate {params.user}@{params.host} with; skipped: "
            + ", ".join(skipped))
    if not tried:
        raise AuthenticationFailed(
            f"no identity to authenticate {params.user}@{params.host} with: give one with "
            "-i/-privkey, or create ~/.ssh/id_ed25519")
    raise AuthenticationFailed(refused_message(params, tried))


def _tried_label(label: str, authorization: str) -> str:
    """`publickey ~/.ssh/id_ed25519`, `publickey bob@laptop (agent)`, `password`,
    `oidc https://issuer`: the method the server was offered, then what it was."""
    if label == "password" or label.startswith("oidc "):
        return label
    return f"publickey {label}" if authorization.startswith("Bearer ") else label


def refused_message(params: ConnectParams, tried: list[str]) -> str:
    """OpenSSH's "Permission denied (publickey)." with what exactly was tried."""
    counted: dict[str, int] = {}
    for label in tried:
        counted[label] = counted.get(label, 0) + 1
    names = [label if n == 1 else f"{label} ({n} times)" for label, n in counted.items()]
    return (f"{params.user}@{params.host}: authentication refused (401); tried: "
            f"{', '.join(names)}. Check the user name, that the server accepts one of "
            "these (its authorized_keys), or give another identity with -i")


def version_refused_message(response: Response, ours: Version) -> str:
    theirs = response.headers.get(b"server", b"").decode("utf-8", "replace").strip()
    detail = response.body.decode("utf-8", "replace").strip()
    return (f"the server ({theirs or 'version not given'}) refused our protocol version "
            f"({ours}) (403){': ' + detail if detail else ''}. One side needs an update "
            "to a version the other speaks")


async def wait_settings(protocol: SSH3Protocol, timeout: float = 2.0) -> None:
    """Peer SETTINGS (which tell us its extensions) normally arrive with the 200."""
    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
        await asyncio.wait_for(protocol.settings_received.wait(), timeout)
