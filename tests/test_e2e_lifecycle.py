"""Ends of a session that are not the command's own exit: the client is interrupted,
or the server shuts down. No remote process may be left behind."""

from __future__ import annotations

import select
import signal
import subprocess
import time

import pytest
from e2e_helpers import descendant_pids, stop_process, wait_for


def _start_long_command(client, server):
    proc = subprocess.Popen(client.argv(server, "echo started; exec sleep 300"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=client.env(), start_new_session=True)
    deadline = time.monotonic() + 15
    seen = b""
    while b"started\n" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            chunk = proc.stdout.read1(4096)
            if not chunk:
                break
            seen += chunk
    assert seen == b"started\n", (seen, proc.poll())
    sessions = descendant_pids(server.pid)
    assert sessions, "the remote command is not running under the server"
    return proc, sessions


def test_interrupted_client_ends_the_remote_command(server, make_client):
    client = make_client(server.backend, trust=server)
    proc, sessions = _start_long_command(client, server)
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130  # 128 + SIGINT, like ssh
    finally:
        stop_process(proc)
    # the client closed its connection: the server hangs the command up
    assert wait_for(lambda: not descendant_pids(server.pid), 10), descendant_pids(server.pid)
    r = client.run(server, "echo ok")
    assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_hung_up_client_ends_the_remote_command_at_once(server, make_client, signum):
    """A closed terminal (SIGHUP) or SIGTERM: the client still closes its connection,
    so the server hangs the session up at once, not after its 30 s idle timeout."""
    client = make_client(server.backend, trust=server)
    proc, sessions = _start_long_command(client, server)
    try:
        proc.send_signal(signum)
        assert proc.wait(timeout=15) == 255
    finally:
        stop_process(proc)
    assert wait_for(lambda: not descendant_pids(server.pid), 5), descendant_pids(server.pid)


def test_server_shutdown_ends_sessions_and_clients(server, make_client):
    client = make_client(server.backend, trust=server)
    proc, sessions = _start_long_command(client, server)
    try:
        leftovers = server.stop()  # SIGTERM
        assert leftovers == [], f"session processes outlived the server: {leftovers}"
        assert server.proc.returncode == 0, server.log()[-2000:]
        # the client learns at once that the connection is gone (no idle timeout)
        assert proc.wait(timeout=10) == 255
        assert proc.stderr.read().startswith(b"ssh3: ")
    finally:
        stop_process(proc)
