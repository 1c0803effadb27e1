"""Bulk data through a session: stdin -> remote command -> stdout, byte for byte."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest
from e2e_helpers import BACKENDS, sha256, sha256_file


@pytest.fixture
def server(shared_server):
    """These tests only run commands: one server per backend for the module."""
    return shared_server


@pytest.mark.parametrize("client_backend", BACKENDS)
def test_10mib_through_cat(server, make_client, client_backend):
    client = make_client(client_backend, trust=server)
    data = os.urandom(10 << 20)
    r = client.run(server, "cat", input=data, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == len(data)
    assert sha256(r.stdout) == sha256(data)


@pytest.mark.parametrize("client_backend", BACKENDS)
def test_stdin_eof_reaches_the_remote_command_every_time(server, make_client, client_backend):
    """`echo x | ssh3 host cat` must end by itself, on every connection. The client
    may only signal stdin EOF (a FIN) to a server that announced it understands it,
    in its HTTP/3 SETTINGS; QUIC does not order those before the 200 response, so
    the client has to wait for them instead of assuming a reference server."""
    client = make_client(client_backend, trust=server)
    for i in range(6):
        try:
            r = client.run(server, "cat", input=f"line {i}\n".encode(), timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run {i}: the remote cat never saw stdin EOF (hung for 10 s)")
        assert (r.returncode, r.stdout) == (0, f"line {i}\n".encode()), r.stderr


def _upload_then_download(server, client, tmp_path, size):
    source = tmp_path / "source.bin"
    with open(source, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    copy = tmp_path / "copy.bin"

    # `cat file | ssh3 host 'cat > copy'`: stdin EOF must reach the remote cat, or
    # this never ends (the timeout turns that into a failure)
    with open(source, "rb") as stdin:
        r = client.run(server, f"cat > {shlex.quote(str(copy))}", stdin=stdin, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""
    assert copy.stat().st_size == size
    assert sha256_file(copy) == sha256_file(source)

    back = tmp_path / "back.bin"
    with open(back, "wb") as out:
        r = client.run(server, f"cat {shlex.quote(str(copy))}", stdout=out, timeout=180)
    assert r.returncode == 0, r.stderr
    assert back.stat().st_size == size
    assert sha256_file(back) == sha256_file(source)


def test_64mib_upload_and_download(server, make_client, tmp_path):
    try:
        _upload_then_download(server, make_client(server.backend, trust=server), tmp_path,
                              64 << 20)
    finally:  # pytest keeps the last temp dirs: do not leave 192 MiB behind
        for name in ("source.bin", "copy.bin", "back.bin"):
            (tmp_path / name).unlink(missing_ok=True)
