"""Many short connections in a row and in parallel: every one must work."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest


def _failures(results):
    return [(i, r.returncode, r.stdout, r.stderr[-500:]) for i, r in enumerate(results)
            if (r.returncode, r.stdout) != (0, b"hello\n")]


@pytest.mark.parametrize("server_backend", ["aioquic"], indirect=True)
def test_100_serial_connections(server, make_client):
    client = make_client("aioquic", trust=server)
    results = [client.run(server, "echo hello", timeout=30) for _ in range(100)]
    assert _failures(results) == []
    assert server.alive()


@pytest.mark.parametrize("server_backend", ["aioquic"], indirect=True)
def test_4_workers_x_25_parallel_connections(server, make_client):
    client = make_client("aioquic", trust=server)

    def worker(_n):
        return [client.run(server, "echo hello", timeout=60) for _ in range(25)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [r for batch in pool.map(worker, range(4)) for r in batch]
    assert len(results) == 100
    assert _failures(results) == []
    assert server.alive()
