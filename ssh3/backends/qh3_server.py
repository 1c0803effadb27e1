"""qh3's server on qh3's batched UDP transport.

`qh3.asyncio.serve` uses asyncio's plain datagram endpoint: one recvfrom, one
connection update and one transmit (so one ACK-bearing sendto) per received packet.
qh3's client already runs on its `OptimizedDatagramTransport` (quinn-udp: recvmmsg
with GRO, and GSO sendmsg for a batch of packets). Here the server runs on it too:
the packets of one receive burst that belong to one connection are handed to that
connection at once (`datagrams_received`), which then answers with one transmit,
and what a transmit produces leaves in one GSO send. On a bulk upload this halves
the server's CPU per byte (profile in docs/throughput.md).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import qh3.asyncio.server as qh3_server
from qh3.asyncio._transport import create_optimized_datagram_transport


class BatchingQuicServer(qh3_server.QuicServer):
    """QuicServer with a batch entry point: short-header packets (all of an
    established connection's) go to their connection in runs; anything else
    (handshakes, unknown connection IDs, version negotiation) takes the library's
    own per-packet path."""

    def datagrams_received(self, datagrams: list[bytes], addr: Any) -> None:
        cid_len = self._configuration.connection_id_length
        protocols = self._protocols
        run: list[bytes] = []
        run_proto: Any = None
        for data in datagrams:
            proto = None
            if data and not data[0] & 0x80:  # short header: DCID right after byte 0
                proto = protocols.get(data[1:1 + cid_len])
            if proto is not None and proto is run_proto:
                run.append(data)
                continue
            if run:
                run_proto.datagrams_received(run, addr)
                run = []
            if proto is None:
                run_proto = None
                self.datagram_received(data, addr)
            else:
                run_proto = proto
                run.append(data)
        if run:
            run_proto.datagrams_received(run, addr)


async def serve(host: str, port: int, **kwargs: Any) -> BatchingQuicServer:
    """Like `qh3.asyncio.serve` (same keyword arguments), on the batched transport."""
    loop = asyncio.get_running_loop()
    family, type_, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    _, protocol = await create_optimized_datagram_transport(
        loop, lambda: BatchingQuicServer(**kwargs), sock=sock)
    return protocol  # type: ignore[return-value]
