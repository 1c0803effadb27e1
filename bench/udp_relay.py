"""A user-space UDP relay that adds a fixed one-way delay in each direction.

    python bench/udp_relay.py --target 127.0.0.1:PORT --delay-ms 25 [--listen 127.0.0.1:0]
                              [--max-seconds 900] [--idle-exit 120]

Prints `udp_relay: listening on 127.0.0.1 port N` on stdout once it is ready.

This kernel has no netem, so QUIC latency is emulated here: every datagram from a
client is sent on to the target, and every answer back to that client, RTT/2 after
it arrived. Each client address gets its own upstream socket, so the server sees one
distinct peer per client, as it would without the relay. Order is kept per direction
(one FIFO and one timer each), which a real path of fixed delay also does.

Everything is bounded: the number of clients, the bytes waiting in each queue (beyond
that a datagram is dropped, like a full router queue), the lifetime, and an idle
limit after which the relay stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import sys
import time
from collections.abc import Callable

MAX_CLIENTS = 4096
MAX_QUEUED_BYTES = 64 << 20  # per direction of one client
CLIENT_IDLE_SECONDS = 120.0


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class DelayLine:
    """A FIFO of datagrams, each released `delay` seconds after it was queued."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float,
                 send: Callable[[bytes], None]) -> None:
        self.loop = loop
        self.delay = delay
        self.send = send
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.dropped = 0

    def push(self, data: bytes) -> None:
        if self.delay <= 0:
            self.send(data)
            return
        if self.queued_bytes + len(data) > MAX_QUEUED_BYTES:
            self.dropped += 1
            return
        due = self.loop.time() + self.delay
        self.queue.append((due, data))
        self.queued_bytes += len(data)
        if self.timer is None:
            self.timer = self.loop.call_at(due, self._release)

    def _release(self) -> None:
        self.timer = None
        # a little slack so datagrams that arrived together leave together
        now = self.loop.time() + 0.0002
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            self.queued_bytes -= len(data)
            self.send(data)
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._release)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.queue.clear()


class _Upstream(asyncio.DatagramProtocol):
    """The socket that talks to the target on behalf of one client."""

    def __init__(self, relay: Relay, client: tuple[str, int]) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.to_target: DelayLine | None = None
        self.to_client: DelayLine | None = None
        self.last_seen = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last_seen = time.monotonic()
        self.relay.last_activity = self.last_seen
        if self.to_client is not None:
            self.to_client.push(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a stopped server: nothing to do, UDP is lossy
        return None


class Relay(asyncio.DatagramProtocol):
    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.clients: dict[tuple[str, int], _Upstream] = {}
        self.pending: dict[tuple[str, int], list[bytes]] = {}
        self.last_activity = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last_activity = time.monotonic()
        up = self.clients.get(addr)
        if up is not None and up.to_target is not None:
            up.last_seen = self.last_activity
            up.to_target.push(data)
            return
        if addr in self.pending:  # upstream socket still being created
            if len(self.pending[addr]) < 64:
                self.pending[addr].append(data)
            return
        if len(self.clients) + len(self.pending) >= MAX_CLIENTS:
            return
        self.pending[addr] = [data]
        self.loop.create_task(self._new_client(addr))

    async def _new_client(self, addr: tuple[str, int]) -> None:
        try:
            transport, up = await self.loop.create_datagram_endpoint(
                lambda: _Upstream(self, addr), remote_addr=self.target)
        except OSError:
            self.pending.pop(addr, None)
            return
        assert self.transport is not None
        relay_transport = self.transport
        up.to_target = DelayLine(self.loop, self.delay, transport.sendto)
        up.to_client = DelayLine(self.loop, self.delay,
                                 lambda d: relay_transport.sendto(d, addr))
        self.clients[addr] = up
        for data in self.pending.pop(addr, []):
            up.to_target.push(data)

    def expire(self, idle: float) -> None:
        now = time.monotonic()
        for addr, up in list(self.clients.items()):
            if now - up.last_seen > idle:
                self._drop(addr, up)

    def _drop(self, addr: tuple[str, int], up: _Upstream) -> None:
        del self.clients[addr]
        for line in (up.to_target, up.to_client):
            if line is not None:
                line.close()
        if up.transport is not None:
            up.transport.close()

    def close(self) -> None:
        for addr, up in list(self.clients.items()):
            self._drop(addr, up)
        if self.transport is not None:
            self.transport.close()


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float,
                max_seconds: float, idle_exit: float,
                ready: Callable[[int], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    transport, relay = await loop.create_datagram_endpoint(
        lambda: Relay(target, delay), local_addr=listen)
    port = transport.get_extra_info("sockname")[1]
    if ready is not None:
        ready(port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    deadline = time.monotonic() + max_seconds
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            if time.monotonic() - relay.last_activity > idle_exit:
                break
            relay.expire(CLIENT_IDLE_SECONDS)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
    finally:
        relay.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--target", required=True, help="host:port of the UDP server")
    ap.add_argument("--delay-ms", type=float, required=True,
                    help="one-way delay added in each direction (RTT/2)")
    ap.add_argument("--max-seconds", type=float, default=900.0,
                    help="stop after this long whatever happens")
    ap.add_argument("--idle-exit", type=float, default=120.0,
                    help="stop after this long without any datagram")
    args = ap.parse_args()
    listen, target = parse_addr(args.listen), parse_addr(args.target)
    for host in (listen[0], target[0]):
        # loopback only: this tool must never send traffic anywhere else
        if not host.startswith("127.") and host not in ("::1", "localhost"):
            print(f"udp_relay: {host} is not a loopback address", file=sys.stderr)
            return 2

    def ready(port: int) -> None:
        print(f"udp_relay: listening on {listen[0]} port {port}", flush=True)

    asyncio.run(serve(listen, target, args.delay_ms / 1000.0, args.max_seconds,
                      args.idle_exit, ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
