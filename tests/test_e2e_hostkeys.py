"""The server's certificate against ~/.ssh3/known_hosts: trust on first use, pinning,
refusals. The certificate is checked before any credential leaves the client, so a
refused connection must not reach the server's authentication at all."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from e2e_helpers import PtyProcess


def _fingerprint(der: bytes) -> str:
    return "SHA256 " + base64.b64encode(hashlib.sha256(der).digest()).decode()


def _auth_lines(server) -> int:
    return server.log().count("ssh3.auth: auth ")


@pytest.fixture
def client(server, make_client):
    return make_client(server.backend)  # empty known_hosts


def test_tofu_asks_on_the_terminal_then_remembers(server, client):
    assert not client.known_hosts.exists()
    term = PtyProcess(client.argv(server, "echo first-run"), client.env(TERM="xterm"))
    try:
        term.expect(rb"authenticity")
        fp = _fingerprint(server.der).encode()
        term.expect(rb"fingerprint is " + re.escape(fp))
        term.expect(rb"\(yes/no\)\? ")
        assert _auth_lines(server) == 0  # nothing was sent before the answer
        term.write(b"yes\n")
        term.expect(rb"first-run\r?\n")
        assert term.wait(timeout=15) == 0
    finally:
        term.close()
    assert client.known_hosts.read_text() == server.known_hosts_line()
    assert _auth_lines(server) == 1  # (so the checks for 0 elsewhere mean something)

    # the second run is silent and needs no terminal
    r = client.run(server, "echo second-run")
    assert (r.returncode, r.stdout) == (0, b"second-run\n"), r.stderr
    assert b"authenticity" not in r.stderr
    assert b"permanently added" not in r.stderr
    assert client.known_hosts.read_text() == server.known_hosts_line()


def test_tofu_answer_no_refuses(server, client):
    term = PtyProcess(client.argv(server, "echo must-not-run"), client.env(TERM="xterm"))
    try:
        term.expect(rb"authenticity")
        term.expect(rb"\(yes/no\)\? ")
        term.write(b"no\n")
        assert term.wait(timeout=15) == 255
    finally:
        term.close()
    assert b"must-not-run\r" not in term.output
    assert not client.known_hosts.exists() or client.known_hosts.read_text() == ""
    assert _auth_lines(server) == 0


def test_changed_certificate_is_refused(server, client, start_server):
    other = start_server(server.backend, name="other")  # a different certificate
    assert other.der != server.der
    client.known_hosts.parent.mkdir(mode=0o700)
    mismatching = server.known_hosts_line().split()[0] + " x509-certificate " + \
        base64.b64encode(other.der).decode() + "\n"
    client.known_hosts.write_text("# pinned certificates\n\n" + mismatching)
    before = client.known_hosts.read_text()

    r = client.run(server, "echo must-not-run")
    assert r.returncode == 255
    assert r.stdout == b""
    err = r.stderr.decode()
    assert "known_hosts" in err
    assert "line 3" in err
    assert _fingerprint(server.der) in err
    assert client.known_hosts.read_text() == before
    assert _auth_lines(server) == 0

    # even with a terminal to ask on, a mismatch is never asked about
    term = PtyProcess(client.argv(server, "echo must-not-run"), client.env(TERM="xterm"))
    try:
        assert term.wait(timeout=15) == 255
    finally:
        term.close()
    assert b"authenticity" not in term.output
    assert b"line 3" in term.output
    assert _auth_lines(server) == 0


def test_unknown_host_without_terminal_is_refused(server, client):
    r = client.run(server, "echo must-not-run")
    assert r.returncode == 255
    assert r.stdout == b""
    assert b"StrictHostKeyChecking=accept-new" in r.stderr
    assert not client.known_hosts.exists() or client.known_hosts.read_text() == ""
    assert _auth_lines(server) == 0


def test_accept_new_adds_and_runs(server, client):
    r = client.run(server, "echo accepted", extra_args=["-o", "StrictHostKeyChecking=accept-new"])
    assert (r.returncode, r.stdout) == (0, b"accepted\n"), r.stderr
    assert b"authenticity" not in r.stderr
    assert client.known_hosts.read_text() == server.known_hosts_line()
    # the next run finds it and adds nothing
    r = client.run(server, "echo again", extra_args=["-o", "StrictHostKeyChecking=accept-new"])
    assert (r.returncode, r.stdout) == (0, b"again\n"), r.stderr
    assert b"permanently added" not in r.stderr
    assert client.known_hosts.read_text() == server.known_hosts_line()


def test_accept_new_still_refuses_a_changed_certificate(server, client, start_server):
    other = start_server(server.backend, name="other")
    client.known_hosts.parent.mkdir(mode=0o700)
    client.known_hosts.write_text(server.known_hosts_line().split()[0] + " x509-certificate "
                                  + base64.b64encode(other.der).decode() + "\n")
    r = client.run(server, "echo must-not-run",
                   extra_args=["-o", "StrictHostKeyChecking=accept-new"])
    assert r.returncode == 255
    assert r.stdout == b""
    assert b"line 1" in r.stderr
    assert _auth_lines(server) == 0
