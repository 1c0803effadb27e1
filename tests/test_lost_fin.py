"""A FIN of ours must reach the peer even when packets are lost (docs/extensions.md,
"FINs on an empty Data message").

qh3 2.1.0 sometimes never resends a FIN-only STREAM frame whose packet was lost (it
looks like aioquic issue #438). A FIN that comes with bytes is resent with them, so on
qh3 our FINs towards our peers ride on an empty Data message
(SSH3Connection.send_channel_data).

Deterministic: the in-memory QUIC pair of quic_pair.py on a fake clock, with a fixed
set of datagrams dropped and each batch of datagrams delivered in a fixed shuffled
order. Channels send data and then a FIN on its own; the peer answers each FIN with
data and a FIN of its own, like a half-closed TCP forward.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from quic_pair import Endpoint, Pair

from ssh3 import connection as c
from ssh3.messages import ChannelData, ChannelHeader

BACKENDS = ("aioquic", "qh3")
CHANNELS = 8
CHUNK = 30000
# (seed, loss rate): scenarios in which qh3 2.1.0 loses a bare FIN: the client's (30),
# the server's answer's (43, 104)
# (found by running this file: `PYTHONPATH=. python tests/test_lost_fin.py 0 120`)
LOSING_SCENARIOS = [(30, 0.1), (43, 0.1), (104, 0.1)]


class LossyPair(Pair):
    """A Pair whose datagrams, once `lossy` is set, are dropped when their
    (direction, index) is in `drops` and delivered in a shuffled order per batch."""

    def __init__(self, tmp_path: Path, backend: str, seed: int, drops: set[tuple[str, int]]):
        super().__init__(tmp_path, backend)
        self.seed = seed
        self.drops = drops
        self.lossy = False
        self.index = {"c": 0, "s": 0}

    def _transfer(self, sender: Endpoint, receiver: Endpoint) -> int:
        datagrams = sender.quic.datagrams_to_send(now=self.now)
        direction = "c" if sender is self.client else "s"
        if self.lossy:
            random.Random(f"{self.seed}-{direction}-{self.index[direction]}").shuffle(datagrams)
        for data, _addr in datagrams:
            if self.lossy:
                key = (direction, self.index[direction])
                self.index[direction] += 1
                if key in self.drops:
                    continue
            receiver.quic.receive_datagram(data, sender.addr, now=self.now)
        return len(datagrams)


def drops_for(seed: int, loss: float) -> set[tuple[str, int]]:
    rnd = random.Random(seed + 1000)
    return {(d, i) for d in "cs" for i in range(4000) if rnd.random() < loss}


def run(tmp_path: Path, backend: str, seed: int, loss: float, *,
        fin_on_data: bool = True) -> tuple[set[int], set[int]]:
    """Run the scenario; return the channels whose FIN never reached the server, and
    those whose answer's FIN never reached the client."""
    rnd = random.Random(seed)
    p = LossyPair(tmp_path, backend, seed, drops_for(seed, loss)).handshake()
    if not fin_on_data:  # what a library that resends bare FINs correctly would do
        for side in (p.client, p.server):
            side.conn._backend = dataclasses.replace(side.conn._backend, loses_bare_fin=False)
    control = p.client.conn.send_request([
        (b":method", b"CONNECT"), (b":protocol", b"ssh3"), (b":scheme", b"https"),
        (b":path", b"/ssh3?user=u"), (b":authority", b"localhost:443")])
    p.exchange()
    p.server.conn.send_headers(control, [(b":status", b"200")])
    p.exchange()
    p.client.take()
    p.server.take()
    p.lossy = True
    server_eof: set[int] = set()
    client_eof: set[int] = set()
    waiting = False

    def send(conn: c.SSH3Connection, cid: int, size: int) -> None:
        for start in range(0, size, CHUNK):
            conn.send_channel_data(cid, ChannelData(b"x" * min(CHUNK, size - start)).encode())

    def step() -> None:
        p.now += rnd.choice([0.001, 0.005, 0.02])
        sent = p._transfer(p.client, p.server)
        p.server.drain()
        sent += p._transfer(p.server, p.client)
        p.client.drain()
        for event in p.server.take():
            if isinstance(event, c.ChannelEOF):
                # the answer: data, then a FIN on its own, maybe after a transmit
                server_eof.add(event.channel_id)
                send(p.server.conn, event.channel_id, rnd.randint(0, 20000))
                if rnd.random() < 0.5:
                    p._transfer(p.server, p.client)
                    p.client.drain()
                p.server.conn.send_channel_data(event.channel_id, b"", end_stream=True)
        client_eof.update(e.channel_id for e in p.client.take() if isinstance(e, c.ChannelEOF))
        timers = [t for t in (p.client.quic.get_timer(), p.server.quic.get_timer())
                  if t is not None]
        # jump to the next timer when idle (within a second while the script goes on)
        if not sent and timers and (waiting or min(timers) < p.now + 1.0):
            p.now = max(p.now, min(timers))
        for side in (p.client, p.server):
            timer = side.quic.get_timer()
            if timer is not None and timer <= p.now:
                side.quic.handle_timer(now=p.now)
            side.drain()

    channels = []
    for _ in range(CHANNELS):
        cid = p.client.conn.open_channel(ChannelHeader(control, "session", CHUNK))
        channels.append(cid)
        send(p.client.conn, cid, rnd.randint(0, 60000))
        for _ in range(rnd.randint(0, 3)):
            step()
        p.client.conn.send_channel_data(cid, b"", end_stream=True)
        for _ in range(rnd.randint(0, 3)):
            step()
    waiting = True
    start = p.now
    while p.now - start < 25 and not (server_eof >= set(channels) <= client_eof):
        step()
    return set(channels) - server_eof, set(channels) - client_eof


def stream_bytes(side: Endpoint, stream_id: int) -> tuple[bytes, bool]:
    """What the QUIC layer delivered on one stream, and whether it ended."""
    chunks = [e for e in side.quic_events
              if type(e).__name__ == "StreamDataReceived" and e.stream_id == stream_id]
    return b"".join(bytes(e.data) for e in chunks), any(e.end_stream for e in chunks)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("peer_is_ours", [True, False])
def test_fin_bytes_on_the_wire(tmp_path: Path, backend: str, peer_is_ours: bool) -> None:
    """On qh3, a FIN towards a peer that announced our SETTING comes with `40 5e 00`;
    towards a reference-like peer (no SETTING) it is bare (Q7), and so on aioquic."""
    p = Pair(tmp_path, backend,
             server_extensions=c.OUR_EXTENSIONS if peer_is_ours else 0).handshake()
    header = ChannelHeader(0, "session", CHUNK)
    cid = p.client.conn.open_channel(header)
    p.client.conn.send_channel_data(cid, ChannelData(b"hi").encode())
    p.exchange()
    p.client.conn.send_channel_data(cid, b"", end_stream=True)
    p.exchange()
    rides = backend == "qh3" and peer_is_ours
    assert p.client.backend.loses_bare_fin == (backend == "qh3")
    assert stream_bytes(p.server, cid) == (
        header.encode() + bytes.fromhex("405e02") + b"hi"
        + (bytes.fromhex("405e00") if rides else b""), True)
    events = [e for e in p.server.take() if getattr(e, "channel_id", None) == cid]
    assert events[-1] == c.ChannelEOF(cid)
    assert (c.MessageReceived(cid, ChannelData(b""), 3) in events) == rides


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("seed", "loss"), LOSING_SCENARIOS)
def test_every_fin_arrives_despite_loss(tmp_path: Path, backend: str, seed: int,
                                        loss: float) -> None:
    """With our FIN handling every channel ends on both sides."""
    assert run(tmp_path, backend, seed, loss) == (set(), set())


@pytest.mark.parametrize(("seed", "loss"), LOSING_SCENARIOS)
def test_scenarios_lose_a_bare_fin_on_qh3(tmp_path: Path, seed: int, loss: float) -> None:
    """The same scenarios with bare FINs lose one on qh3 2.1.0: the test above can fail
    without the workaround. If this starts failing, qh3 resends bare FINs correctly
    now and `loses_bare_fin` can go."""
    server_missing, client_missing = run(tmp_path, "qh3", seed, loss, fin_on_data=False)
    assert server_missing or client_missing


if __name__ == "__main__":
    # search: the seeds in [FIRST, LAST) whose scenario loses a bare FIN on qh3
    import sys
    import tempfile

    first, last = int(sys.argv[1]), int(sys.argv[2])
    loss = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
    where = Path(tempfile.mkdtemp())
    for n in range(first, last):
        try:
            bare = run(where, "qh3", n, loss, fin_on_data=False)
        except Exception as exc:  # noqa: BLE001 - qh3 2.1.0 can fail in datagrams_to_send
            print(n, "error", exc)
            continue
        if bare != (set(), set()):
            print(n, "bare FINs lost (server, client):", bare,
                  "with the fix:", run(where, "qh3", n, loss))
