"""Refused logins: exit status 255 and a message that says why."""

from __future__ import annotations

import re

from e2e_helpers import known_hosts_line, make_key


def test_key_not_in_authorized_keys_is_refused(server, make_client, tmp_path):
    client = make_client(server.backend, trust=server)
    stranger = make_key(tmp_path / "stranger")
    r = client.run(server, "echo must-not-run", key=stranger)
    assert r.returncode == 255
    assert r.stdout == b""
    assert re.search(rb"401|authentication", r.stderr, re.I), r.stderr
    assert "auth refused" in server.log()
    # the right key still works on the same server
    r = client.run(server, "echo ok")
    assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr


def test_unknown_user_is_refused(server, make_client):
    client = make_client(server.backend, trust=server)
    r = client.run(server, "echo must-not-run", user="no-such-user-e2e")
    assert r.returncode == 255
    assert r.stdout == b""
    assert re.search(rb"401|authentication", r.stderr, re.I), r.stderr


def test_wrong_url_path_gives_404(server, make_client):
    client = make_client(server.backend, trust=server)
    # the certificate is pinned per host:port/path: trust it for the wrong path too,
    # so that the request reaches the server
    with open(client.known_hosts, "a") as f:
        f.write(known_hosts_line(server.port, server.der, "/not-the-secret"))
    r = client.run(server, "echo must-not-run", path="/not-the-secret")
    assert r.returncode == 255
    assert r.stdout == b""
    assert b"404" in r.stderr
    # no authentication was attempted on a path that does not exist
    assert "ssh3.auth: auth " not in server.log()
