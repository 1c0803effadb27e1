"""The client's QUIC connect from a chosen local address (OpenSSH's `-b` /
BindAddress), for both backends.

The libraries' own `connect` always binds the UDP socket to `[::]:0`; this one
does what they do (dual-stack socket, the server's address v4-mapped) but binds
to the given address first. Used only when a bind address is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..backends import Backend


def _mapped(addr: tuple[Any, ...]) -> tuple[Any, ...]:
    """An address for an AF_INET6 dual-stack socket."""
    return ("::ffff:" + addr[0], addr[1], 0, 0) if len(addr) == 2 else addr


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int,
                   flags: int = 0) -> tuple[Any, ...]:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=flags)
    return _mapped(infos[0][4])


def _library_parts(backend: Backend) -> tuple[type, Callable[..., Any]]:
    """(QuicConnection class, make_transport(loop, factory, sock)) of `backend`."""
    if backend.name == "qh3":
        from qh3.asyncio._transport import create_optimized_datagram_transport
        from qh3.quic.connection import QuicConnection

        return QuicConnection, create_optimized_datagram_transport

    from aioquic.quic.connection import QuicConnection as AioQuicConnection

    async def plain(loop: asyncio.AbstractEventLoop, factory: Callable[[], Any],
                    sock: socket.socket) -> tuple[Any, Any]:
        return await loop.create_datagram_endpoint(factory, sock=sock)

    return AioQuicConnection, plain


@contextlib.asynccontextmanager
async def connect_from(backend: Backend, bind_address: str, host: str, port: int, *,
                       configuration: Any, create_protocol: Callable[..., Any]
                       ) -> AsyncIterator[Any]:
    """Like `backend.connect(host, port, ..., wait_connected=True)`, the socket bound
    to `bind_address` (a name or an address; port chosen by the kernel)."""
    loop = asyncio.get_running_loop()
    remote = await _resolve(loop, host, port)
    try:
        local = await _resolve(loop, bind_address, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:  # not "Could not resolve hostname" of the server
        raise OSError(exc.errno, f"bad bind address {bind_address}: {exc.strerror}") from None
    quic_connection, make_transport = _library_parts(backend)
    connection = quic_connection(configuration=configuration)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(local)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind to {bind_address}: {exc.strerror}") from exc
    transport, protocol = await make_transport(loop, lambda: create_protocol(connection), sock)
    try:
        protocol.connect(remote)
        await protocol.wait_connected()
        yield protocol
    finally:
        protocol.close()
        await protocol.wait_closed()
        transport.close()
