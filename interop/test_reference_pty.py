"""Interactive shells on a pty between our implementation and the reference Go ssh3.

The client runs on a real pty that is its controlling terminal (the Go client asks
for a pty only when no command is given and /dev/tty is a terminal of known size,
§6.5). The test types into the pty and reads it with bounded select loops.
"""

from __future__ import annotations

from collections.abc import Callable

from interop_harness import Pair, PtyProcess, set_winsize

ROWS, COLUMNS = 33, 97
TERM = "vt100"
SIZE = rb"SZ:(\d+) (\d+):SZ"


def _size(proc: PtyProcess) -> tuple[int, int]:
    proc.send(b"echo SZ:$(stty size):SZ\r")
    m = proc.expect(SIZE)
    return int(m.group(1)), int(m.group(2))


def test_pty_shell(pair: Pair, spawn_pty: Callable[..., PtyProcess]) -> None:
    """pty-req carries TERM and the window size; the shell is usable; ``exit`` ends
    the session and the client exits 0.

    Our client -> the reference server additionally resizes the local terminal
    (SIGWINCH): the reference server announces no window-change support and ends the
    conversation when it receives one (PROTOCOL.md Q3), so our client must not send
    it. The session must go on, with the remote size unchanged.
    """
    proc = spawn_pty(pair, rows=ROWS, columns=COLUMNS, term=TERM)
    # the typed text (echoed by the remote pty) never matches: READY$((1+1)) != READY2
    proc.expect(rb"READY2", timeout=25, resend=b"echo READY$((1+1))\r")
    proc.send(b"echo T:$TERM:T\r")
    proc.expect(rb"T:" + TERM.encode() + rb":T")
    assert _size(proc) == (ROWS, COLUMNS), proc.text()

    if pair.client == "ours":
        set_winsize(proc.master, ROWS + 7, COLUMNS + 23)  # SIGWINCH to our client
        proc.send(b"echo READY$((2+2))\r")
        proc.expect(rb"READY4")
        assert _size(proc) == (ROWS, COLUMNS), (
            "the remote pty was resized: our client sent window-change to a reference "
            "server\n" + proc.text())

    proc.send(b"exit\r")
    code = proc.wait(timeout=20)
    assert code == 0, f"{pair.name}: client exit status {code}\n{proc.text()}\n" \
                      f"--- server log ---\n{pair.server.log_tail()}"
