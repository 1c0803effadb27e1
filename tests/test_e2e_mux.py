"""ControlMaster / ControlPath / ControlPersist end to end: real `ssh3` runs share
one QUIC connection to a real `ssh3-server`, on both QUIC backends."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from e2e_helpers import (
    PtyProcess,
    descendant_pids,
    pid_alive,
    set_winsize,
    stop_process,
    wait_for,
)

from ssh3_client.mux_client import (
    FrameReader,
    decode_fields,
    encode_fields,
    frame,
    parse_time,
    plan,
    session_fields,
)
from ssh3_client.mux_master import request_from_fields

_CONVERSATION_RE = re.compile(r"conversation \d+ for \S+ from (\S+) started")


def _conversations(server) -> list[str]:
    """The client address of every conversation the server started."""
    return _CONVERSATION_RE.findall(server.log())


class Mux:
    """`ssh3` runs with one ControlPath; every master started is stopped by PID."""

    def __init__(self, client, server, path: Path) -> None:
        self.client = client
        self.server = server
        self.path = path
        self.pids: set[int] = set()

    def options(self, master: str = "auto", persist: str = "yes") -> list[str]:
        return ["-o", f"ControlMaster={master}", "-o", f"ControlPath={self.path}",
                "-o", f"ControlPersist={persist}"]

    def run(self, command: str, *, master: str = "auto", persist: str = "yes",
            input: bytes | None = None, extra: list[str] | None = None,
            ) -> subprocess.CompletedProcess:
        r = self.client.run(self.server, command, input=input, timeout=30,
                            extra_args=[*self.options(master, persist), *(extra or [])])
        self.note_master()
        return r

    def control(self, command: str) -> subprocess.CompletedProcess:
        return self.client.run(self.server, None, timeout=15,
                               extra_args=["-o", f"ControlPath={self.path}", "-O", command])

    def note_master(self) -> int | None:
        r = self.control("check")
        match = re.search(rb"Master running \(pid=(\d+)\)", r.stderr)
        if match:
            self.pids.add(int(match.group(1)))
            return int(match.group(1))
        return None

    def stop(self) -> None:
        if self.path.exists():
            self.control("exit")
        for pid in self.pids:
            if not wait_for(lambda p=pid: not pid_alive(p), 5):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def mux(server, make_client, tmp_path):
    client = make_client(server.backend, trust=server)
    m = Mux(client, server, tmp_path / "ctl")
    yield m
    m.stop()


# ---------------------------------------------------------------- unit


def test_options():
    assert parse_time("90") == 90 and parse_time("1h30m") == 5400 and parse_time("10s") == 10
    with pytest.raises(ValueError):
        parse_time("soon")
    p = plan({"controlmaster": "autoask", "controlpath": "/x", "controlpersist": "5m"})
    assert (p.master, p.path, p.persist) == ("auto", "/x", 300)
    assert plan({"controlpath": "none"}).path is None
    assert plan({"controlpersist": "yes"}).persist == float("inf")
    assert plan({"controlpersist": "0"}).persist == float("inf")
    assert plan({}, force_master=1).master == "yes"
    assert plan({}, force_master=2).master == "auto"  # -MM: ask
    with pytest.raises(ValueError):
        plan({"controlmaster": "sometimes"})


def test_request_round_trip():
    fields = session_fields(b"ls -l", True, "xterm", "h", forward_agent=True, escape="^A",
                            env=[("LANG", b"C.UTF-8")])
    data = frame(b"S", encode_fields(fields))
    (kind, payload), = FrameReader().feed(data)
    request = request_from_fields(dict(decode_fields(payload)))
    assert kind == b"S" and request.command == b"ls -l" and request.pty
    assert request.term == "xterm" and request.forward_agent and request.escape_char == 1
    assert request.env == [("LANG", b"C.UTF-8")] and not request.subsystem
    for bad in (b"\x00", b"\x00\x01\x00\x05ab", encode_fields(fields) + b"x"):
        with pytest.raises(ValueError):
            decode_fields(bad)


# ---------------------------------------------------------------- end to end


def test_second_command_no_new_handshake(mux):
    first = mux.run("echo one")
    assert (first.returncode, first.stdout) == (0, b"one\n"), first.stderr
    pid = mux.note_master()
    assert pid is not None and pid_alive(pid)
    assert (mux.path.stat().st_mode & 0o777) == 0o600
    second = mux.run("cat; exit 7", input=b"through the master\n")
    assert (second.returncode, second.stdout) == (7, b"through the master\n"), second.stderr
    third = mux.run("echo err >&2; echo out")
    assert (third.stdout, third.stderr) == (b"out\n", b"err\n")
    # one QUIC connection (one client address) carried every conversation
    peers = _conversations(mux.server)
    assert len(peers) >= 3 and len(set(peers)) == 1, peers


def test_check_and_exit(mux):
    r = mux.control("check")
    assert r.returncode == 255 and b"No such file or directory" in r.stderr
    assert mux.run("true").returncode == 0
    pid = mux.note_master()
    assert pid is not None
    r = mux.control("exit")
    assert r.returncode == 0 and b"Exit request sent." in r.stderr
    assert wait_for(lambda: not pid_alive(pid), 10)
    assert not mux.path.exists()
    assert mux.control("check").returncode == 255


def test_persist_master_exits_after_last_client(mux):
    assert mux.run("true", persist="1").returncode == 0
    pid = mux.note_master()
    assert pid is not None
    assert wait_for(lambda: not pid_alive(pid), 10)
    assert not mux.path.exists()


def test_stale_socket_replaced(mux):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(mux.path))
    stale.close()  # the file stays, nobody listens: a master that died
    r = mux.run("echo fresh", master="no")  # removed; a direct connection is made
    assert (r.returncode, r.stdout) == (0, b"fresh\n"), r.stderr
    assert not mux.path.exists()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(mux.path))
    stale.close()
    r = mux.run("echo master")  # auto: removed, and this run becomes the master
    assert (r.returncode, r.stdout) == (0, b"master\n"), r.stderr
    assert mux.note_master() is not None


def test_foreground_master_waits_for_clients(mux):
    """ControlMaster=yes without ControlPersist: the master runs its own command in
    the foreground and serves others meanwhile; it exits after the last of them."""
    argv = mux.client.argv(mux.server, "sleep 1; echo master-done",
                           extra_args=mux.options("yes", "no"))
    master = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=mux.client.env(),
                              start_new_session=True)
    try:
        assert wait_for(mux.path.exists, 15)
        slow = subprocess.Popen(mux.client.argv(mux.server, "sleep 2; echo client-done",
                                                extra_args=mux.options("no")),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=mux.client.env(),
                                start_new_session=True)
        try:
            out, err = slow.communicate(timeout=20)
            assert (slow.returncode, out) == (0, b"client-done\n"), err
        finally:
            stop_process(slow)
        out, err = master.communicate(timeout=20)
        assert (master.returncode, out) == (0, b"master-done\n"), err
        assert len(set(_conversations(mux.server))) == 1
        assert not mux.path.exists()
    finally:
        stop_process(master)


def test_pty_session_and_window_size(mux):
    assert mux.run("true").returncode == 0  # the background master
    watch = ("stty size; while sleep 0.1; do s=$(stty size); "
             "[ \"$s\" != \"24 80\" ] && { echo now-$s; break; }; done; read line; "
             "echo got-$line")
    term = PtyProcess(mux.client.argv(mux.server, watch, extra_args=["-t", *mux.options()]),
                      mux.client.env(), rows=24, cols=80)
    try:
        term.expect(rb"24 80")
        set_winsize(term.master, 40, 120)
        term.signal(signal.SIGWINCH)  # relayed to the master, which sends window-change
        term.expect(rb"now-40 120")
        term.write(b"typed\r")  # the master reads the client's terminal
        term.expect(rb"got-typed")
        assert term.wait(15) == 0
    finally:
        term.close()
    assert len(set(_conversations(mux.server))) == 1


def test_escape_disconnect_through_master(mux):
    assert mux.run("true").returncode == 0
    term = PtyProcess(mux.client.argv(mux.server, None, extra_args=["-t", *mux.options()]),
                      mux.client.env())
    try:
        term.write(b"echo READY$((6*7))\r")
        term.expect(rb"READY42")
        term.write(b"\r~.")
        term.expect(rb"Connection to \S+ closed\.")
        assert term.wait(15) == 255
    finally:
        term.close()
    assert mux.run("echo after").stdout == b"after\n"  # the master goes on


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGKILL, -9), (signal.SIGTERM, 255),
                                              (signal.SIGINT, 130)])
def test_killed_client_ends_remote_command(mux, signum, code):
    assert mux.run("true").returncode == 0
    proc = subprocess.Popen(mux.client.argv(mux.server, "sleep 60", extra_args=mux.options()),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=mux.client.env(),
                            start_new_session=True)
    try:
        assert wait_for(lambda: _has_sleep(mux.server), 15)
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=10)
        assert proc.returncode == code and b"Traceback" not in err, err
        assert wait_for(lambda: not _has_sleep(mux.server), 15)
    finally:
        stop_process(proc)
    assert mux.run("echo still-serving").stdout == b"still-serving\n"
    assert len(set(_conversations(mux.server))) == 1


def _has_sleep(server) -> bool:
    for pid in descendant_pids(server.pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                return True
    return False


def test_env_through_master(mux):
    assert mux.run("true").returncode == 0
    r = mux.run("echo $LC_ALL", extra=["-o", "SetEnv=LC_ALL=C.UTF-8"])
    assert (r.returncode, r.stdout) == (0, b"C.UTF-8\n"), r.stderr


def test_stop_and_second_master(mux):
    assert mux.run("true").returncode == 0
    pid = mux.note_master()
    # ControlMaster=yes while a master lives: this run goes alone (OpenSSH's message)
    r = mux.run("echo alone", master="yes", persist="no")
    assert (r.returncode, r.stdout) == (0, b"alone\n")
    assert b"already exists, disabling multiplexing" in r.stderr
    assert mux.note_master() == pid
    r = mux.control("stop")  # no new clients: the master goes once idle (even persist: yes)
    assert r.returncode == 0 and b"Stop listening request sent." in r.stderr
    assert not mux.path.exists()
    assert pid is not None and wait_for(lambda: not pid_alive(pid), 10)
    assert len(set(_conversations(mux.server))) == 2


def test_unsafe_directory_refused(tmp_path):
    from ssh3_client.mux_master import bind_socket

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by anyone, not sticky: another user could swap it
    assert bind_socket(str(shared / "ctl")) is None
    assert not (shared / "ctl").exists()
    shared.chmod(0o1777)  # sticky, like /tmp: fine
    sock = bind_socket(str(shared / "ctl"))
    assert sock is not None
    try:
        assert (shared / "ctl").stat().st_mode & 0o777 == 0o600
    finally:
        sock.close()


@pytest.mark.parametrize("persist", ["yes", "no"])
def test_no_multiplexing_towards_reference_like_server(tmp_path, authorized_keys, make_client,
                                                       server_backend, persist):
    """A server that announces no extension (as the Go reference, which serves one
    conversation per connection) never gets a second CONNECT: no master starts and
    each run connects by itself."""
    from e2e_helpers import Server

    server = Server(tmp_path / "plain", server_backend, authorized_keys,
                    extra_args=["-extensions-mask", "0"]).start()
    try:
        client = make_client(server_backend, trust=server)
        m = Mux(client, server, tmp_path / "ctl")
        for word in ("one", "two"):
            r = m.run(f"echo {word}", persist=persist)
            assert (r.returncode, r.stdout) == (0, f"{word}\n".encode()), r.stderr
        assert not m.path.exists() and m.note_master() is None
        peers = _conversations(server)
        assert len(peers) == 2 and len(set(peers)) == 2
    finally:
        assert not server.stop()


def test_bad_requests_leave_master_serving(mux):
    assert mux.run("true").returncode == 0

    def exchange(data: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(mux.path))
            s.sendall(data)
            out = b""
            while chunk := s.recv(4096):
                out += chunk
            return out

    assert exchange(frame(b"Z")) == b""  # unknown frame: connection closed
    assert exchange(b"\xff" * 64) == b""  # absurd length
    # a session request without file descriptors / with a malformed body
    assert b"three file descriptors" in exchange(frame(b"S", encode_fields([])))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(mux.path))
        null = os.open(os.devnull, os.O_RDWR)
        try:
            socket.send_fds(s, [frame(b"S", b"\x00\x05junk")], [null, null, null])
        finally:
            os.close(null)
        kind, payload = FrameReader().feed(s.recv(4096))[0]
        assert kind == b"F" and b"malformed" in payload
    r = mux.run("echo still-fine")
    assert (r.returncode, r.stdout) == (0, b"still-fine\n")
    assert len(set(_conversations(mux.server))) == 1
