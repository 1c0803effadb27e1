"""Half-closes through -L over a lossy path: every FIN must arrive (docs/extensions.md,
"FINs on an empty Data message"; the deterministic test is test_lost_fin.py).

A UDP relay between the real `ssh3` and a real `ssh3-server` drops 5% of the
datagrams in each direction (seeded, so a failure can be rerun). Through `-L`, a TCP
client uploads, half-closes (its FIN becomes the channel's), and the target answers
only after that EOF, then closes (its FIN comes back). A lost FIN shows up as an
exchange that never ends. Both QUIC backends, the same on both sides.
Without the empty-Data FIN, about one run in eight hangs on qh3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import select
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_helpers import HOST, Client, Server, known_hosts_line
from test_e2e_forward_tcp import ForwardingClient, free_port, pattern, sink_server

EXCHANGES = 40
PARALLEL = 4
LOSS = 0.05
DOWNLOAD = 50_000
# qh3 2.1.0 has a second bug under loss: datagrams_to_send() raises this now and then,
# and whatever the packet being built held is gone (asyncio logs "Exception in
# callback"); an exchange can hang then, FIN on data or not. Not ours to fix: such a
# run is reported as an expected failure, any other failure fails
QH3_TRANSMIT_BUG = "reserved stream is missing"
UPLOAD = 100_000


class LossyRelay:
    """Client ↔ relay ↔ server in a thread; once `lossy` is set, each datagram is
    dropped with probability `loss` (a seeded generator)."""

    def __init__(self, target: tuple[str, int], loss: float, seed: int) -> None:
        self.target = target
        self.loss = loss
        self.random = random.Random(seed)
        self.lossy = False
        self.dropped = self.passed = 0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.listener.bind((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.upstream.bind((HOST, 0))
        self.client: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lossy-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.listener, self.upstream], [], [], 0.05)
            for sock in ready:
                try:
                    data, addr = sock.recvfrom(65536)
                except OSError:
                    continue
                if sock is self.listener:
                    self.client = addr
                if self.lossy and self.random.random() < self.loss:
                    self.dropped += 1
                    continue
                self.passed += 1
                if sock is self.listener:
                    self.upstream.sendto(data, self.target)
                elif self.client is not None:
                    self.listener.sendto(data, self.client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        self.upstream.close()


def _exchange(port: int, n: int) -> str | None:
    """One upload + half-close + answer; None if right, else what went wrong."""
    payload = pattern(UPLOAD + n)
    want = pattern(DOWNLOAD) + \
        f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
    answer = b""
    with socket.create_connection((HOST, port), timeout=30) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            while data := sock.recv(65536):
                answer += data
        except TimeoutError:
            return f"exchange {n}: no EOF after {len(answer)} of {len(want)} bytes"
    return None if answer == want else f"exchange {n}: wrong answer ({len(answer)} bytes)"


@pytest.fixture
def lossy_relay() -> Callable[..., LossyRelay]:
    relays: list[LossyRelay] = []

    def start(target: tuple[str, int], loss: float, seed: int) -> LossyRelay:
        relays.append(LossyRelay(target, loss, seed))
        return relays[-1]

    yield start  # type: ignore[misc]
    for relay in relays:
        relay.close()


def test_half_closes_over_a_lossy_path(server: Server, make_client: Callable[..., Client],
                                       tmp_path: Path,
                                       lossy_relay: Callable[..., LossyRelay]) -> None:
    relay = lossy_relay((HOST, server.port), LOSS, seed=server.port)
    client = make_client(server.backend)
    client.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    client.known_hosts.write_text(known_hosts_line(relay.port, server.der, server.url_path))
    relayed = dataclasses.replace(server, port=relay.port)  # the client goes via the relay
    with sink_server(download=DOWNLOAD) as sink_port:
        port = free_port()
        fc = ForwardingClient(client, relayed, ["-L", f"{port}:{HOST}:{sink_port}"],
                              tcp_ports=(port,), log_dir=tmp_path)
        try:
            relay.lossy = True
            with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
                failures = [f for f in pool.map(lambda n: _exchange(port, n), range(EXCHANGES))
                            if f is not None]
            logs = f"client:\n{fc.stderr()}\nserver:\n{server.log()}"
            if failures and server.backend == "qh3" and QH3_TRANSMIT_BUG in logs:
                pytest.xfail(f"qh3 2.1.0 lost a packet's frames ({QH3_TRANSMIT_BUG}): "
                             f"{failures}")
            assert failures == [], f"{failures}\n{logs}"
            assert relay.dropped > 0
        finally:
            assert fc.stop() == 0
    assert server.alive()
