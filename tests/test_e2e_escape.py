"""Escape sequences (~. ~? ~C, -e) on an interactive session, through a real pty."""

from __future__ import annotations

import socket

import pytest
from e2e_helpers import PtyProcess
from services import echo_service


@pytest.fixture
def server(shared_server):
    """These tests only run shells: one server per backend for the module."""
    return shared_server


def _shell(client, server, extra_args=()):
    term = PtyProcess(client.argv(server, None, extra_args=list(extra_args)),
                      client.env(TERM="xterm"), rows=24, cols=80)
    # the arithmetic shows the shell ran it: a local echo would not say READY2
    term.write(b"echo READY$((1+1))\r")
    term.expect(rb"READY2")
    return term


def test_disconnect(server, make_client):
    term = _shell(make_client(trust=server), server)
    try:
        term.write(b"\r~.")
        code = term.wait(timeout=10)
        assert code == 255, bytes(term.output[-2000:])
        term.expect(rb"Connection to 127\.0\.0\.1 closed\.")
    finally:
        term.close()


def test_help_and_literal_tilde(server, make_client):
    term = _shell(make_client(trust=server), server)
    try:
        term.write(b"~?")
        term.expect(rb"(?s)Supported escape sequences:.*~\.   - terminate connection")
        # a ~ in the middle of a line goes through, and so does ~~ at a line start
        term.write(b"echo a~b$((1+1))\r")
        term.expect(rb"a~b2")
        term.write(b"~~ 2>/dev/null; echo T$((3+4))\r")
        term.expect(rb"T7")
        term.write(b"exit\r")
        assert term.wait(timeout=10) == 0, bytes(term.output[-2000:])
    finally:
        term.close()


def test_escape_none(server, make_client):
    term = _shell(make_client(trust=server), server, ["-e", "none"])
    try:
        term.write(b"\r~.\r")  # sent as typed: the shell says ~. is not found
        term.write(b"echo STILL$((2+2))\r")
        term.expect(rb"STILL4")
        assert term.proc.poll() is None
        term.write(b"exit\r")
        term.wait(timeout=10)
    finally:
        term.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_local_forward(server, make_client):
    with echo_service() as echo_port:
        term = _shell(make_client(trust=server), server)
        try:
            port = _free_port()
            term.write(b"~C")
            term.expect(rb"ssh3> ")
            term.write(f"-L {port}:127.0.0.1:{echo_port}\r".encode())
            term.expect(rf"Forwarding port {port}\.".encode())
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(b"hello through ~C\n")
                got = b""
                while not got.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    assert chunk, got
                    got += chunk
            assert got == b"hello through ~C\n"
            term.write(b"~#")
            term.expect(rf"-L {port}:127\.0\.0\.1:{echo_port}".encode())
            term.write(b"~C")
            term.expect(rb"ssh3> ")
            term.write(f"-KL {port}\r".encode())
            term.expect(rb"Canceled forwarding\.")
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            # raw mode is back: the session still works
            term.write(b"echo AFTER$((5+5))\r")
            term.expect(rb"AFTER10")
            term.write(b"exit\r")
            assert term.wait(timeout=10) == 0, bytes(term.output[-2000:])
        finally:
            term.close()
