"""Dynamic forwarding, `-D [bind_address:]port`: a local SOCKS server (SOCKS4,
SOCKS4a and SOCKS5, CONNECT only, no authentication) whose every CONNECT becomes a
TCP channel relayed like -L.

The handshake parser is our own, small and incremental: the only Python SOCKS
libraries kept up to date (python-socks, PySocks) implement the client side.

Names (SOCKS4a, SOCKS5 ATYP 3) are resolved on the server, as OpenSSH does, through
our `direct-tcp-name@ssh3-py` channel when the server announced EXT_TCP_BY_NAME
(docs/extensions.md). A server without it (the reference) gets `direct-tcp` with an
address this client resolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any

from ssh3.aio.channel import Channel, ChannelClosed
from ssh3.aio.conversation import Conversation
from ssh3.connection import EXT_TCP_BY_NAME
from ssh3.forward import listen_tcp
from ssh3.messages import (
    TCP_BY_NAME_CHANNEL_TYPE,
    ChannelData,
    ChannelOpenConfirmation,
    ChannelOpenFailure,
)

from .forwarding import (
    KEEPALIVE_INTERVAL,
    ForwardError,
    ForwardSpec,
    Report,
    _finish,
    _os_reason,
    _split_colons,
    _stderr,
    _TcpRelay,
    host_port,
)

log = logging.getLogger("ssh3.client.socks")

# a SOCKS client must finish its handshake within this time
HANDSHAKE_TIMEOUT = 30.0
# the server's answer to a channel: our server connects first (timeout 10 s)
ANSWER_TIMEOUT = 30.0
MAX_NAME = 255
MAX_USERID = 255
READ_SIZE = 4096

# SOCKS5 reply codes (RFC 1928 §6)
REP_SUCCEEDED = 0
REP_GENERAL_FAILURE = 1
REP_NOT_ALLOWED = 2
REP_HOST_UNREACHABLE = 4
REP_CONNECTION_REFUSED = 5
REP_COMMAND_NOT_SUPPORTED = 7
REP_ATYP_NOT_SUPPORTED = 8
# SOCKS4
SOCKS4_GRANTED = 0x5A
SOCKS4_REJECTED = 0x5B


class SocksError(Exception):
    """A handshake we refuse; `reply` (possibly empty) goes to the client first."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class SocksRequest:
    version: int  # 4 (also 4a) or 5
    host: str  # an IP literal, or a name when `is_name`
    port: int
    is_name: bool


def reply(version: int, rep: int) -> bytes:
    """The final reply; the bound address is always 0.0.0.0:0 (nobody uses it)."""
    if version == 4:
        return bytes([0, SOCKS4_GRANTED if rep == REP_SUCCEEDED else SOCKS4_REJECTED]) \
            + b"\x00" * 6
    return bytes([5, rep, 0, 1]) + b"\x00" * 6


class _NeedMore(Exception):
    pass


class SocksParser:
    """Feed bytes as they arrive; `feed` returns the request once it is complete.

    `output` collects what must be sent before the request can come (the SOCKS5
    method selection); `rest` holds bytes the client sent after its request. The
    buffer is bounded: a handshake is at most a few hundred bytes.
    """

    MAX_BUFFER = 2 + 255 + 4 + 1 + MAX_NAME + 2 + 8 + MAX_USERID + 1 + MAX_NAME + 1

    def __init__(self) -> None:
        self._buf = bytearray()
        self._greeted = False  # SOCKS5 method selection done
        self.output = bytearray()
        self.rest = b""
        self.request: SocksRequest | None = None

    def feed(self, data: bytes) -> SocksRequest | None:
        if self.request is not None:
            raise RuntimeError("handshake already complete")
        self._buf += data
        try:
            request = self._parse()
        except _NeedMore:
            if len(self._buf) > self.MAX_BUFFER:
                raise SocksError("handshake too long") from None
            return None
        self.request = request
        return request

    def _need(self, n: int) -> None:
        if len(self._buf) < n:
            raise _NeedMore

    def _parse(self) -> SocksRequest:
        self._need(1)
        version = self._buf[0]
        if version == 4:
            return self._parse4()
        if version == 5:
            if not self._greeted:
                self._greet5()
            return self._parse5()
        raise SocksError(f"not a SOCKS4 or SOCKS5 client (first byte {version:#04x})")

    def _greet5(self) -> None:
        self._need(2)
        count = self._buf[1]
        if count == 0:
            raise SocksError("SOCKS5 greeting offers no method", b"\x05\xff")
        self._need(2 + count)
        methods = bytes(self._buf[2:2 + count])
        del self._buf[:2 + count]
        if 0 not in methods:
            raise SocksError("SOCKS5 client wants authentication; only 'none' is offered",
                             b"\x05\xff")
        self._greeted = True
        self.output += b"\x05\x00"

    def _parse5(self) -> SocksRequest:
        buf = self._buf
        self._need(4)
        if buf[0] != 5:
            raise SocksError(f"bad SOCKS5 request version {buf[0]}",
                             reply(5, REP_GENERAL_FAILURE))
        if buf[1] != 1:
            raise SocksError(f"SOCKS5 command {buf[1]} not supported (CONNECT only)",
                             reply(5, REP_COMMAND_NOT_SUPPORTED))
        atyp = buf[3]
        if atyp == 1:
            end = 4 + 4
            self._need(end + 2)
            host, is_name = str(ipaddress.IPv4Address(bytes(buf[4:end]))), False
        elif atyp == 4:
            end = 4 + 16
            self._need(end + 2)
            host, is_name = str(ipaddress.IPv6Address(bytes(buf[4:end]))), False
        elif atyp == 3:
            self._need(5)
            length = buf[4]
            if length == 0:
                raise SocksError("SOCKS5 request with an empty host name",
                                 reply(5, REP_GENERAL_FAILURE))
            end = 5 + length
            self._need(end + 2)
            host, is_name = _name(bytes(buf[5:end]), 5)
        else:
            raise SocksError(f"SOCKS5 address type {atyp} not supported",
                             reply(5, REP_ATYP_NOT_SUPPORTED))
        port = struct.unpack("!H", buf[end:end + 2])[0]
        self.rest = bytes(buf[end + 2:])
        return SocksRequest(5, host, port, is_name)

    def _parse4(self) -> SocksRequest:
        buf = self._buf
        self._need(8)
        if buf[1] != 1:
            raise SocksError(f"SOCKS4 command {buf[1]} not supported (CONNECT only)",
                             reply(4, REP_COMMAND_NOT_SUPPORTED))
        port = struct.unpack("!H", buf[2:4])[0]
        ip = bytes(buf[4:8])
        user_end = _nul(buf, 8, MAX_USERID, "SOCKS4 user ID")
        pos = user_end + 1
        # SOCKS4a: 0.0.0.x with x != 0 means "a name follows the user ID"
        if ip[:3] == b"\x00\x00\x00" and ip[3] != 0:
            name_end = _nul(buf, pos, MAX_NAME, "SOCKS4a host name")
            if name_end == pos:
                raise SocksError("SOCKS4a request with an empty host name",
                                 reply(4, REP_GENERAL_FAILURE))
            host, is_name = _name(bytes(buf[pos:name_end]), 4)
            pos = name_end + 1
        else:
            host, is_name = str(ipaddress.IPv4Address(ip)), False
        self.rest = bytes(buf[pos:])
        return SocksRequest(4, host, port, is_name)


def _nul(buf: bytearray, start: int, limit: int, what: str) -> int:
    """Index of the NUL ending a string at `start`, at most `limit` bytes long."""
    end = buf.find(0, start, start + limit + 1)
    if end < 0:
        if len(buf) > start + limit:
            raise SocksError(f"{what} longer than {limit} bytes", reply(4, REP_GENERAL_FAILURE))
        raise _NeedMore
    return end


def _name(raw: bytes, version: int) -> tuple[str, bool]:
    """(host, is_name): an IP literal sent as a name needs no resolution."""
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SocksError("host name is not ASCII", reply(version, REP_GENERAL_FAILURE)) \
            from None
    try:
        return str(ipaddress.ip_address(name)), False
    except ValueError:
        return name, True


def _failure_code(message: str, reason_code: int) -> int:
    """A ChannelOpenFailure's text (our server puts the OS reason there) -> SOCKS5."""
    text = message.lower()
    if reason_code == 1:  # administratively prohibited
        return REP_NOT_ALLOWED
    if "refused" in text:
        return REP_CONNECTION_REFUSED
    if any(word in text for word in ("unreachable", "not known", "no address", "resolv",
                                     "name", "timed out")):
        return REP_HOST_UNREACHABLE
    return REP_GENERAL_FAILURE


# ---------------------------------------------------------------- the forwarder


@dataclass(frozen=True)
class SocksSpec:
    listen_host: str | None  # None: every interface
    listen_port: int
    text: str


def parse_dynamic_forward(text: str) -> SocksSpec:
    """OpenSSH's `-D [bind_address:]port`: 127.0.0.1 unless a bind address is given;
    an empty one or `*` means every interface."""
    parts = _split_colons(text)
    if len(parts) == 1:
        bind: str | None = "127.0.0.1"
        port_text = parts[0]
    elif len(parts) == 2:
        bind, port_text = parts
        if bind in ("", "*"):
            bind = None
    else:
        raise ForwardError(f"bad -D {text!r}: expected [bind_address:]port")
    try:
        port = int(port_text)
    except ValueError:
        raise ForwardError(f"bad port {port_text!r} in -D {text!r}") from None
    if not 0 < port < 65536:
        raise ForwardError(f"bad port {port_text!r} in -D {text!r}")
    return SocksSpec(bind, port, text)


class SocksForwarder:
    def __init__(self, conv: Conversation, spec: SocksSpec, report: Report = _stderr) -> None:
        self.conv = conv
        self.spec = spec
        self.report = report
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._said_local_resolution = False

    async def start(self) -> None:
        self._server = await listen_tcp(self._accepted, self.spec.listen_host,
                                        self.spec.listen_port, f"-D {self.spec.text!r}")
        log.info("SOCKS server on %s", host_port(self.spec.listen_host or "*",
                                                  self.spec.listen_port))

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request, rest = await asyncio.wait_for(_handshake(reader, writer),
                                                   HANDSHAKE_TIMEOUT)
            await self._connect(request, rest, reader, writer)
        except SocksError as exc:
            log.info("SOCKS client refused: %s", exc)
            if exc.reply:
                with contextlib.suppress(OSError):
                    writer.write(exc.reply)
                    await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("SOCKS connection ended: %s", exc)
        except Exception:  # noqa: BLE001 - one bad connection must not end the others
            log.exception("SOCKS connection failed")
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _target(self, request: SocksRequest) -> tuple[str, tuple[str, int]]:
        """Channel type and address for the request."""
        if not request.is_name:
            return "direct-tcp", (request.host, request.port)
        if self.conv.peer_extensions & EXT_TCP_BY_NAME:
            return TCP_BY_NAME_CHANNEL_TYPE, (request.host, request.port)
        if not self._said_local_resolution:
            self._said_local_resolution = True
            log.info("the server cannot resolve names (no EXT_TCP_BY_NAME): SOCKS host "
                     "names are resolved on this client")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(request.host, request.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise SocksError(f"cannot resolve {request.host}: {_os_reason(exc)}",
                             reply(request.version, REP_HOST_UNREACHABLE)) from None
        # IPv4 first, as in -L: the server tries one address only
        for want in (socket.AF_INET, socket.AF_INET6):
            for family, _t, _p, _n, sockaddr in infos:
                if family == want:
                    return "direct-tcp", (str(sockaddr[0]).split("%")[0], request.port)
        raise SocksError(f"{request.host} has no IP address",
                         reply(request.version, REP_HOST_UNREACHABLE))

    async def _connect(self, request: SocksRequest, rest: bytes, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        target_text = host_port(request.host, request.port)
        if self.conv.ended.is_set():
            raise SocksError("the conversation ended", reply(request.version,
                                                             REP_GENERAL_FAILURE))
        channel_type, address = await self._target(request)
        channel = self.conv.open_channel(channel_type, address=address)
        try:
            early = await self._answer(channel, request, target_text)
            writer.write(reply(request.version, REP_SUCCEEDED) + early)
            await writer.drain()
            log.debug("SOCKS%d CONNECT %s on channel %d", request.version, target_text,
                      channel.channel_id)
            spec = ForwardSpec("tcp", None, 0, request.host, request.port, f"-D {target_text}")
            relay = _TcpRelay(channel, reader, writer, spec, lambda text: log.info("%s", text))
            relay.answered.set()  # the answer was read above
            if rest:
                await channel.write(rest)
            await relay.run()
        finally:
            _finish(channel)

    async def _answer(self, channel: Channel, request: SocksRequest, target_text: str) -> bytes:
        """Wait for the confirmation; return Data that came instead (a peer may skip
        the confirmation, §3.4). A failure raises SocksError with the mapped reply."""
        try:
            msg = await asyncio.wait_for(channel.read(), ANSWER_TIMEOUT)
        except (ChannelClosed, TimeoutError) as exc:
            raise SocksError(f"CONNECT {target_text}: {exc or 'no answer'}",
                             reply(request.version, REP_GENERAL_FAILURE)) from None
        if isinstance(msg, ChannelOpenConfirmation):
            return b""
        if isinstance(msg, ChannelData):
            return msg.data
        if isinstance(msg, ChannelOpenFailure):
            raise SocksError(f"CONNECT {target_text}: {msg.message}",
                             reply(request.version, _failure_code(msg.message,
                                                                  msg.reason_code)))
        raise SocksError(f"CONNECT {target_text}: the server ended the channel",
                         reply(request.version, REP_GENERAL_FAILURE))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


async def _handshake(reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> tuple[SocksRequest, bytes]:
    parser = SocksParser()
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            raise SocksError("client left during the handshake")
        request = parser.feed(data)
        if parser.output:
            writer.write(bytes(parser.output))
            parser.output.clear()
            await writer.drain()
        if request is not None:
            return request, parser.rest


class DynamicForwarding:
    """Every -D listener of one run (plus a keep-alive), as an async context."""

    def __init__(self, conv: Conversation, specs: list[SocksSpec],
                 report: Report = _stderr) -> None:
        self.conv = conv
        self.specs = specs
        self.report = report
        self.forwarders: list[SocksForwarder] = []
        self._keepalive: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DynamicForwarding:
        try:
            for spec in self.specs:
                forwarder = SocksForwarder(self.conv, spec, self.report)
                await forwarder.start()
                self.forwarders.append(forwarder)
        except BaseException:
            await self.close()
            raise
        if self.specs:
            self._keepalive = asyncio.ensure_future(self._keep_alive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _keep_alive(self) -> None:
        """Proxied connections can be quiet for long: keep QUIC from idling out."""
        protocol: Any = self.conv.protocol
        while not protocol.terminated.is_set():
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(protocol.ping(), KEEPALIVE_INTERVAL)

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        for forwarder in self.forwarders:
            await forwarder.close()
        self.forwarders.clear()
