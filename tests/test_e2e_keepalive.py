"""ServerAliveInterval / ServerAliveCountMax end to end: QUIC PINGs to a real
ssh3-server, which is frozen (SIGSTOP) to play a dead server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest
from e2e_helpers import descendant_pids, pid_alive, stop_process, wait_for

from ssh3_client.keepalive import DEFAULT_COUNT_MAX, KeepaliveError, settings


def test_settings():
    assert settings({}) == (0.0, DEFAULT_COUNT_MAX)
    assert settings({"serveraliveinterval": "5", "serveralivecountmax": "2"}) == (5.0, 2)
    for bad in ({"serveraliveinterval": "x"}, {"serveraliveinterval": "-1"},
                {"serveralivecountmax": "0"}):
        with pytest.raises(KeepaliveError):
            settings(bad)


def test_bad_value_refused(start_server, make_client):
    server = start_server()
    client = make_client(server.backend, trust=server)
    r = client.run(server, "true", timeout=30, extra_args=["-o", "ServerAliveInterval=soon"])
    assert r.returncode == 255 and b"ServerAliveInterval" in r.stderr


def test_live_server_keeps_session(start_server, make_client):
    """PINGs that are answered change nothing."""
    server = start_server()
    client = make_client(server.backend, trust=server)
    r = client.run(server, "sleep 2.5; echo done", timeout=30,
                   extra_args=["-o", "ServerAliveInterval=0.5", "-o", "ServerAliveCountMax=2"])
    assert (r.returncode, r.stdout, r.stderr) == (0, b"done\n", b"")


@pytest.mark.parametrize("backend", ["aioquic", "qh3"])
def test_frozen_server_times_out(start_server, make_client, backend):
    server = start_server(backend)
    client = make_client(backend, trust=server)
    argv = client.argv(server, "sleep 30", extra_args=["-o", "ServerAliveInterval=1",
                                                        "-o", "ServerAliveCountMax=2"])
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=client.env(), start_new_session=True)
    frozen = False
    try:
        # the session runs once the server has a `sleep` below it
        assert wait_for(lambda: any(_comm(p) == "sleep" for p in descendant_pids(server.pid)),
                        15), server.log()
        os.kill(server.pid, signal.SIGSTOP)
        frozen = True
        start = time.monotonic()
        _out, err = proc.communicate(timeout=15)
        elapsed = time.monotonic() - start
        assert proc.returncode == 255, err
        assert f"ssh3: Timeout, server {server.target().split(':')[0]} not responding.".encode() \
            in err, err
        assert elapsed < 10, elapsed
    finally:
        if frozen and pid_alive(server.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGCONT)
        stop_process(proc)
        server.stop()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
