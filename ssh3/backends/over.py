"""A client QUIC connection over a datagram transport we supply instead of a UDP
socket (proxy jump: the inner connection's packets ride in a direct-udp channel).

aioquic and qh3 share the sans-I/O API used here (`QuicConnection(configuration=)`,
a protocol with `connection_made`, `connect`, `wait_connected`, `datagram_received`),
so one function serves both adapters; each binds its own connection class.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any


@contextlib.asynccontextmanager
async def connect_over(connection_class: type, transport: Any, addr: Any, *,
                       configuration: Any, create_protocol: Callable[..., Any],
                       wait_connected: bool = True) -> AsyncIterator[Any]:
    """Like the library's `connect`, but packets go to `transport.sendto` and come
    back through `protocol.datagram_received`, which the transport calls once
    `transport.set_protocol(protocol)` told it where.

    If the transport has a `failed` future (its carrier refused or broke), the
    handshake wait ends with that future's exception instead of a timeout.
    """
    connection = connection_class(configuration=configuration)
    protocol = create_protocol(connection)
    protocol.connection_made(transport)
    transport.set_protocol(protocol)
    try:
        protocol.connect(addr)
        if wait_connected:
            await _wait_connected(protocol, getattr(transport, "failed", None))
        yield protocol
    finally:
        protocol.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(protocol.wait_closed(), 1.0)
        transport.close()


async def _wait_connected(protocol: Any, failed: asyncio.Future[None] | None) -> None:
    waiter = asyncio.ensure_future(protocol.wait_connected())
    if failed is None:
        await waiter
        return
    try:
        await asyncio.wait({waiter, failed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(BaseException):
                await waiter
            # the library's own waiter (behind a shield) fails later, when the
            # connection is closed: retrieve that exception so nobody logs it
            inner = getattr(protocol, "_connected_waiter", None)
            if inner is not None:
                inner.add_done_callback(_retrieve)
    if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
        return
    if failed.done() and not failed.cancelled():
        exc = failed.exception()
        if exc is not None:
            raise exc
    waiter.result()  # the handshake's own failure (ConnectionError)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
