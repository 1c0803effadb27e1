"""qh3's server on qh3's batched UDP transport.

`qh3.asyncio.serve` uses asyncio's plain datagram endpoint: one recvfrom, one
connection update and one transmit (so one ACK-bearing sendto) per received packet.
qh3's client already runs on its `OptimizedDatagramTransport` (quinn-udp: recvmmsg
with GRO, and GSO sendmsg for a batch of packets). Here the server runs on it too,
with batched_udp's `datagrams_received` routing: the packets of one receive burst
that belong to one connection reach it at once, it transmits once, and what it
sends leaves in one GSO send (figures in docs/throughput.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

import qh3.asyncio.server
from qh3.asyncio._transport import create_optimized_datagram_transport

from .batched_udp import bind_udp, server_class


async def serve(host: str, port: int, **kwargs: Any) -> Any:
    """Like `qh3.asyncio.serve` (same keyword arguments), on the batched transport."""
    loop = asyncio.get_running_loop()
    sock = bind_udp(host, port)
    cls = server_class(qh3.asyncio.server.QuicServer)
    _, protocol = await create_optimized_datagram_transport(loop, lambda: cls(**kwargs),
                                                            sock=sock)
    return protocol
