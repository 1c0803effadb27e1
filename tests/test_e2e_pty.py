"""An interactive shell on a pty, driven through a real local pty."""

from __future__ import annotations

import signal

import pytest
from e2e_helpers import BACKENDS, PtyProcess, set_winsize


@pytest.fixture
def server(shared_server):
    """These tests only run commands: one server per backend for the module."""
    return shared_server


@pytest.mark.parametrize("client_backend", BACKENDS)
def test_pty_shell_size_and_resize(server, make_client, client_backend):
    client = make_client(client_backend, trust=server)
    # no command and a tty on stdin: the client asks for a pty and a shell
    term = PtyProcess(client.argv(server, None), client.env(TERM="xterm"), rows=24, cols=80)
    try:
        # the arithmetic shows the shell ran it: a local echo would not say READY2
        term.write(b"echo READY$((1+1))\r")
        term.expect(rb"READY2")

        term.write(b"stty size\r")
        term.expect(rb"(?<![0-9])24 80\r?\n")

        set_winsize(term.master, 40, 120)
        term.signal(signal.SIGWINCH)
        # a round trip after the signal, so the window change has been sent
        term.write(b"echo SYNC$((2+3))\r")
        term.expect(rb"SYNC5")
        term.write(b"stty size\r")
        term.expect(rb"(?<![0-9])40 120\r?\n")

        term.write(b"echo TERM=$TERM.\r")
        term.expect(rb"TERM=xterm\.")

        term.write(b"exit\r")
        code = term.wait(timeout=15)
        assert code == 0, bytes(term.output[-2000:])
    finally:
        term.close()
