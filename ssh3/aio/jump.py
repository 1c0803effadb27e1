"""Proxy jump for the client driver: dial the final host's QUIC connection through a
jump host's conversation (PROTOCOL.md §3.9, §10.6).

`open_connection` calls `connect_via` when `ConnectParams.via` names the conversation
with the jump host; everything after the handshake (certificate check, CONNECT,
authentication) is the normal flow, end to end with the final host.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..backends import Backend
from .udp_tunnel import INNER_PACKET_SIZE, ChannelDatagramTransport, TunnelError

if TYPE_CHECKING:
    from .client import ConnectParams

# the framing one hop adds around an inner packet: the outer short header (flags,
# a connection ID of up to 20 bytes, a packet number), the AEAD tag, the DATAGRAM
# frame header and the two SSH3 varints (§5.1); ssh3.connection reserves 64 bytes
HOP_OVERHEAD = 72

__all__ = ["CARRIED_PACKET_SIZE", "HOP_OVERHEAD", "INNER_PACKET_SIZE", "MAX_PACKET_SIZE",
           "TunnelError", "configure_inner",
           "connect_via", "hop_backend", "hop_packet_size", "timeout_message"]


# the largest packet a target may send to a client whose packets are 1200 bytes:
# our servers match the client's packet size (the backends' adopt_packet_size),
# quic-go starts at 1252 (PROTOCOL.md §3.9), an unadapted qh3 at 1280; what path
# MTU discovery adds on top is probed, and a probe lost in the tunnel is harmless
CARRIED_PACKET_SIZE = 1280
# quic-go reads at most 1452-byte UDP payloads
MAX_PACKET_SIZE = 1452


def hop_packet_size(carried: int) -> int:
    """The UDP payload size for a connection that carries `carried` levels of
    tunnelled connections (0: an ordinary, innermost connection)."""
    if carried <= 0:
        return INNER_PACKET_SIZE
    return CARRIED_PACKET_SIZE + carried * HOP_OVERHEAD


def hop_backend(name: str | None, packet_size: int) -> str | None:
    """The backend for a hop whose packets must be `packet_size` bytes. A server
    that sizes its packets on the client's first Initial (ours on qh3) must see
    one that big; a backend that pads its Initial to less (qh3: 1280) would leave
    the hop too small to relay the next hop's packets in a chain, so aioquic,
    which pads to its full packet size, carries that hop instead."""
    from ..backends import get_backend

    cap = get_backend(name).initial_packet_cap
    if cap is not None and packet_size > cap + HOP_OVERHEAD:
        return "aioquic"
    return name


def configure_inner(configuration: Any) -> None:
    """A tunnelled connection keeps its packets at QUIC's minimum (§10.6) and does
    not probe for bigger ones: a probe cannot fit the jump host's datagram anyway."""
    configuration.max_datagram_size = INNER_PACKET_SIZE
    if hasattr(configuration, "probe_datagram_size"):  # qh3's path MTU discovery
        configuration.probe_datagram_size = False


def timeout_message(params: ConnectParams) -> str:
    return (f"no answer from {params.host} port {params.port} through jump host "
            f"{params.via_label or '?'} within {params.connect_timeout or 0:.0f} s: is the server "
            f"running there, can the jump host reach it over UDP, and do its packets fit the "
            f"jump host's datagrams (ssh3-server -v logs drops)?")


async def _resolve(host: str, port: int) -> tuple[str, int]:
    """The target's address, resolved here as the reference does (§3.9): the
    channel header carries an IP address, never a name."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise TunnelError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    if not infos:
        raise TunnelError(f"cannot resolve {host}")
    # IPv4 first: the jump host is more likely to reach it
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    address = infos[0][4]
    return str(address[0]), int(address[1])


@contextlib.asynccontextmanager
async def connect_via(backend: Backend, params: ConnectParams, configuration: Any,
                      create_protocol: Callable[..., Any]) -> AsyncIterator[Any]:
    """The handshaken inner protocol; closes it, then its channel, on exit."""
    conv = params.via
    assert conv is not None
    label = params.via_label or "?"
    if backend.connect_over is None:
        raise TunnelError(f"the QUIC backend {backend.name} cannot run a connection over "
                          "a jump host")
    if conv.ended.is_set():
        raise TunnelError(f"the conversation with jump host {label} has ended")
    need = int(configuration.max_datagram_size)
    # a channel ID of up to 4 varint bytes: the worst case for the header
    limit = conv.protocol.connection.max_datagram_payload(conv.control_stream_id, 1 << 29)
    if limit < need:
        raise TunnelError(
            f"jump host {label}: one QUIC datagram on that connection carries at most "
            f"{limit} bytes, but the connection to {params.host} needs {need}-byte packets "
            f"(give the jump connection packets of "
            f"{max(need, CARRIED_PACKET_SIZE) + HOP_OVERHEAD} bytes: "
            f"ConnectParams.max_datagram_size)")
    target = await _resolve(params.host, params.port)
    transport = ChannelDatagramTransport(conv, target, label)
    try:
        async with backend.connect_over(transport, target, configuration=configuration,
                                        create_protocol=create_protocol) as protocol:
            yield protocol
    finally:
        transport.close()
