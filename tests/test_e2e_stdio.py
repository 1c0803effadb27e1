"""The client's stdio at the edges: both output streams at once, input nobody reads,
and an output pipe that closes early."""

from __future__ import annotations

import subprocess

import pytest
from e2e_helpers import BACKENDS, descendant_pids, stop_process, wait_for


@pytest.fixture
def server(shared_server):
    """These tests only run commands: one server per backend for the module."""
    return shared_server


def test_stdout_and_stderr_together(server, make_client):
    client = make_client(server.backend, trust=server)
    size = 3_000_000
    r = client.run(server, f"(head -c {size} /dev/zero | tr '\\0' a) & "
                           f"(head -c {size} /dev/zero | tr '\\0' b >&2); wait", timeout=60)
    assert r.returncode == 0
    assert len(r.stdout) == size and r.stdout == b"a" * size
    assert len(r.stderr) == size and r.stderr == b"b" * size


@pytest.mark.parametrize("client_backend", BACKENDS)
def test_unread_stdin_and_early_exit(server, make_client, tmp_path, client_backend):
    """10 MiB on stdin of a command that never reads it: the exit status comes back
    and the client says nothing else (no Python warnings on stderr)."""
    client = make_client(client_backend, trust=server)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x00" * (10 << 20))
    try:
        for i in range(5):
            with open(big, "rb") as stdin:
                r = client.run(server, "exit 7", stdin=stdin, timeout=60)
            assert (r.returncode, r.stdout, r.stderr) == (7, b"", b""), f"run {i}"
    finally:
        big.unlink()


def test_closed_stdout_pipe_ends_the_client_cleanly(server, make_client):
    """`ssh3 host yes | head -c 10`: the client stops (no traceback) and the remote
    command does not keep running."""
    client = make_client(server.backend, trust=server)
    proc = subprocess.Popen(client.argv(server, "yes"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=client.env(),
                            start_new_session=True)
    try:
        assert proc.stdout.read(10) == b"y\ny\ny\ny\ny\n"
        proc.stdout.close()
        code = proc.wait(timeout=15)
        err = proc.stderr.read()
    finally:
        stop_process(proc)
    assert b"Traceback" not in err, err.decode(errors="replace")
    assert code != 0
    assert wait_for(lambda: not descendant_pids(server.pid), 10), descendant_pids(server.pid)
