"""Brute-force defence end to end: repeated failures from 127.0.0.1 get the source
refused without any credential check; exemptions; attempts per connection."""

from __future__ import annotations

from pathlib import Path

from e2e_helpers import Server, make_key


def _server(tmp_path: Path, authorized_keys: Path, *args: str) -> Server:
    srv = Server(tmp_path / "srv", "aioquic", authorized_keys, extra_args=list(args))
    return srv.start()


def test_repeated_failures_penalise_the_source(tmp_path, authorized_keys, make_client):
    srv = _server(tmp_path, authorized_keys)
    try:
        client = make_client("aioquic", trust=srv)
        stranger = make_key(tmp_path / "other")
        for _ in range(3):
            r = client.run(srv, "true", key=stranger)
            assert r.returncode == 255
        # now even the right key is refused, and no signature was checked
        r = client.run(srv, "echo hi")
        assert r.returncode == 255 and b"401" in r.stderr, r.stderr
        log = srv.log()
        assert "source penalised" in log
        assert log.count("auth refused") == 4 and "auth accepted" not in log
    finally:
        srv.stop()


def test_exempt_source_is_never_penalised(tmp_path, authorized_keys, make_client):
    srv = _server(tmp_path, authorized_keys, "-penalty-exempt", "127.0.0.0/8,::1")
    try:
        client = make_client("aioquic", trust=srv)
        stranger = make_key(tmp_path / "other")
        for _ in range(4):
            assert client.run(srv, "true", key=stranger).returncode == 255
        r = client.run(srv, "echo hi")
        assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr
    finally:
        srv.stop()


def test_attempts_per_connection_are_limited(tmp_path, authorized_keys, make_client):
    srv = _server(tmp_path, authorized_keys, "-per-source-penalties", "no",
                  "-max-auth-tries", "2")
    try:
        client = make_client("aioquic", trust=srv)
        keys = [make_key(tmp_path / f"k{i}") for i in range(3)]
        args = [a for k in keys[1:] for a in ("-i", str(k))]
        # three wrong identities on one connection: the server closes after two
        r = client.run(srv, "true", key=keys[0], extra_args=args)
        assert r.returncode == 255
        assert "2 failed authentications" in srv.log()
        r = client.run(srv, "echo ok")  # a new connection may try again
        assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr
    finally:
        srv.stop()
