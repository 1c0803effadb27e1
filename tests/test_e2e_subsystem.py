"""Subsystems: `ssh3 -s host NAME` sends a `subsystem` request; the server runs
`-subsystem NAME=COMMAND` like exec, sftp defaults to the system's sftp-server,
and an unknown name is refused with a clear message and exit status 255."""

from __future__ import annotations

import os
import select
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import BACKENDS, Server, stop_process


@pytest.fixture(scope="module", params=BACKENDS)
def sub_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               authorized_keys: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp(f"subsys-{request.param}"), request.param,
                    authorized_keys,
                    extra_args=["-subsystem", "echo=tr a-z A-Z", "-subsystem", "env=env"])
    with server.running():
        yield server


def test_configured_subsystem_runs_like_exec(sub_server, make_client):
    client = make_client(sub_server.backend, trust=sub_server)
    r = client.run(sub_server, "echo", input=b"hello\n", extra_args=["-s"])
    assert (r.returncode, r.stdout) == (0, b"HELLO\n"), r.stderr
    assert "subsystem 'echo'" in sub_server.log()


def test_unknown_subsystem_is_refused(sub_server, make_client):
    client = make_client(sub_server.backend, trust=sub_server)
    r = client.run(sub_server, "nosuch", extra_args=["-s"], timeout=30)
    assert r.returncode == 255
    assert b"ssh3: subsystem 'nosuch' refused" in r.stderr, r.stderr
    assert "subsystem 'nosuch' refused: not configured" in sub_server.log()
    # the conversation and the server survive
    r = client.run(sub_server, "echo ok")
    assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr


@pytest.mark.skipif(not any(Path(p).exists() for p in (
    "/usr/lib/openssh/sftp-server", "/usr/lib/sftp-server", "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server")), reason="no sftp-server installed")
def test_sftp_is_there_by_default(sub_server, make_client):
    """The sftp-server answers SSH_FXP_INIT with SSH_FXP_VERSION."""
    client = make_client(sub_server.backend, trust=sub_server)
    init = bytes([0, 0, 0, 5, 1, 0, 0, 0, 3])  # length 5, SSH_FXP_INIT, version 3
    # sftp-server exits at stdin EOF without flushing: keep stdin open until it answered
    proc = subprocess.Popen(client.argv(sub_server, "sftp", extra_args=["-s"]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=client.env(), start_new_session=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(init)
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "no answer from sftp-server"
        answer = os.read(proc.stdout.fileno(), 64)
        assert answer[4:5] == bytes([2]), answer  # SSH_FXP_VERSION
        proc.stdin.close()
        assert proc.wait(20) == 0
    finally:
        stop_process(proc)
