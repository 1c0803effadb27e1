"""The batched UDP paths under the QUIC libraries (ssh3/backends/batched_udp.py,
gso.py), on real sockets on 127.0.0.1: every packet arrives once, intact and in
order, and bursts reach the protocol as runs per sender. The QUIC traffic over
them is covered end to end by the e2e tests (every ssh3-server runs on them)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from ssh3.backends.batched_udp import BURST, BatchedDatagramTransport, bind_udp
from ssh3.backends.gso import MAX_BYTES, MAX_SEGMENTS, GsoSender, _groups, gso_supported


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.runs: list[tuple[list[bytes], object]] = []
        self.got = asyncio.Event()
        self.lost = asyncio.Event()
        self.errors: list[Exception] = []

    def datagrams_received(self, datagrams: list[bytes], addr: object) -> None:
        self.runs.append((list(datagrams), addr))
        self.got.set()

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    def packets(self) -> list[bytes]:
        return [d for run, _ in self.runs for d in run]


async def _until(collector: Collector, count: int) -> None:
    while len(collector.packets()) < count:
        collector.got.clear()
        await asyncio.wait_for(collector.got.wait(), 5)


def test_groups_follow_gso_rules():
    # equal sizes, only the last of a group shorter, bounded in count and bytes
    sizes = [1200] * 3 + [500] + [1200] * 2 + [1300] + [100] * (MAX_SEGMENTS + 5)
    groups = _groups([bytes(n) for n in sizes])
    assert [len(d) for g in groups for d in g] == sizes  # nothing lost or reordered
    for g in groups:
        assert all(len(d) == len(g[0]) for d in g[:-1])
        assert len(g[-1]) <= len(g[0])
        assert len(g) <= MAX_SEGMENTS
        assert sum(map(len, g)) <= MAX_BYTES
    assert [len(g) for g in groups][:3] == [4, 2, 2]  # 1300 takes one 100 as its tail


def test_burst_arrives_as_runs_per_sender():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        proto = Collector()
        sock = bind_udp("127.0.0.1", 0)
        port = sock.getsockname()[1]
        transport = BatchedDatagramTransport(loop, sock, proto)
        transport.start()
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        try:
            sent = []
            for i in range(BURST + 20):  # more than one readiness callback takes
                sender = a if i < 30 or i >= 40 else b
                data = os.urandom(1 + i * 7 % 1400)
                sender.sendto(data, ("127.0.0.1", port))
                sent.append((data, sender.getsockname()))
            await _until(proto, len(sent))
            assert proto.packets() == [d for d, _ in sent]
            for run, addr in proto.runs:  # a run never mixes senders
                assert {s for d, s in sent if d in run} == {addr}
            assert any(len(run) > 1 for run, _ in proto.runs)  # and bursts do batch
            # the transport answers through sendto
            transport.sendto(b"pong", a.getsockname())
            a.settimeout(5)
            assert a.recvfrom(100)[0] == b"pong"
        finally:
            a.close()
            b.close()
            transport.close()
        await asyncio.wait_for(proto.lost.wait(), 5)
        assert sock.fileno() == -1  # closed with the transport
        assert not proto.errors

    asyncio.run(main())


@pytest.mark.skipif(not hasattr(socket, "CMSG_SPACE"), reason="no sendmsg control data")
def test_gso_sender_delivers_every_packet_intact():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        receiver = Collector()
        rsock = bind_udp("127.0.0.1", 0)
        rtransport = BatchedDatagramTransport(loop, rsock, receiver)
        rtransport.start()
        target = rsock.getsockname()
        # the sender side as aioquic's client has it: asyncio's own endpoint
        stransport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                            local_addr=("127.0.0.1", 0))
        sender = GsoSender.wrap(stransport)
        if not gso_supported(stransport.get_extra_info("socket")):
            assert sender is None  # without kernel support the plain path stays
            stransport.close()
            rtransport.close()
            return
        assert sender is not None
        try:
            packets = [os.urandom(1200) for _ in range(50)] + [os.urandom(700)] + \
                [os.urandom(1252) for _ in range(3)] + [os.urandom(40)]
            sender.hold()
            for p in packets:
                sender.sendto(p, target)
            sender.flush()
            await _until(receiver, len(packets))
            assert receiver.packets() == packets
            sender.sendto(b"unheld", target)  # outside hold/flush: straight through
            await _until(receiver, len(packets) + 1)
            assert receiver.packets()[-1] == b"unheld"
        finally:
            sender.close()
            stransport.close()
            rtransport.close()

    asyncio.run(main())
