"""Running commands: output, exit codes, stderr, and a signal-killed command."""

from __future__ import annotations

import pytest
from e2e_helpers import BACKENDS


@pytest.fixture
def server(shared_server):
    """These tests only run commands: one server per backend for the module."""
    return shared_server


@pytest.mark.parametrize("client_backend", BACKENDS)
def test_exec_output_and_exit_codes(server, make_client, client_backend):
    client = make_client(client_backend, trust=server)

    r = client.run(server, "echo hello")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"hello\n", b"")

    r = client.run(server, "exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"", b"")

    # 255 is also the client's own failure status: here it must be the command's
    r = client.run(server, "exit 255")
    assert (r.returncode, r.stdout, r.stderr) == (255, b"", b"")

    # several words are joined into one command line, as with ssh
    r = client.run(server, ["echo", "a", "b"])
    assert (r.returncode, r.stdout) == (0, b"a b\n"), r.stderr


@pytest.mark.parametrize("client_backend", BACKENDS)
def test_stderr_is_separate(server, make_client, client_backend):
    client = make_client(client_backend, trust=server)
    r = client.run(server, "echo out; echo err >&2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"out\n"
    assert b"err\n" in r.stderr
    assert b"err" not in r.stdout


@pytest.mark.parametrize("client_backend", BACKENDS)
def test_killed_by_sigterm_gives_143_and_server_keeps_serving(server, make_client,
                                                              client_backend):
    client = make_client(client_backend, trust=server)
    r = client.run(server, "echo before; kill -TERM $$; echo after")
    assert (r.returncode, r.stdout) == (143, b"before\n"), r.stderr  # 128 + SIGTERM
    assert server.alive()
    r = client.run(server, "echo ok")
    assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr


def test_forced_pty_for_a_command(server, make_client):
    """-t gives a command a pty even when stdin is not a terminal (default 80x24)."""
    client = make_client(server.backend, trust=server)
    r = client.run(server, "tty; stty size; echo err >&2", extra_args=["-t"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split(b"\r\n")
    assert lines[0].startswith(b"/dev/pts/"), r.stdout
    assert lines[1:] == [b"24 80", b"err", b""], r.stdout  # one stream on a pty
