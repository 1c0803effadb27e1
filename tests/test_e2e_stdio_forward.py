"""`ssh3 -W host:port` end to end: a real ssh3-server, the real client, a TCP echo
service on 127.0.0.1, and OpenSSH riding over ssh3 (ProxyCommand) to a real sshd."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import HOST, USER, stop_process
from services import echo_service

from ssh3_client.cli import UsageError, parse_args
from ssh3_client.stdio_forward import StdioTarget, parse_stdio_target

EOF_MARK = b"<server saw EOF>"


@pytest.fixture
def server(shared_server):
    """Only channels are opened: one server per backend for the module."""
    return shared_server


@pytest.fixture
def echo_port() -> Iterator[int]:
    with echo_service(EOF_MARK) as port:
        yield port


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def test_parse_stdio_target():
    assert parse_stdio_target("example.org:22") == StdioTarget("example.org", 22)
    assert parse_stdio_target("[::1]:2222") == StdioTarget("::1", 2222)
    assert parse_stdio_target("10.0.0.1:80").is_name is False
    assert parse_args(["-W", "h:1", "t"]).stdio_forward == StdioTarget("h", 1)
    assert parse_args(["-Wh:1", "t"]).stdio_forward == StdioTarget("h", 1)
    for bad in ("nohost", "h:0", "h:x", ":22", "[::1:22"):
        with pytest.raises(UsageError):
            parse_args(["-W", bad, "t"])


def test_round_trip_and_half_close(server, make_client):
    client = make_client(server.backend, trust=server)
    data = b"hello over -W\n"
    for target in (f"{HOST}:{{port}}", "localhost:{port}"):  # an address, a name
        with echo_service(EOF_MARK) as port:
            r = client.run(server, None, input=data, timeout=30,
                           extra_args=["-W", target.format(port=port)])
        assert (r.returncode, r.stderr) == (0, b""), r.stderr
        assert r.stdout == data + EOF_MARK


def test_five_mib(server, make_client, tmp_path, echo_port):
    client = make_client(server.backend, trust=server)
    payload = os.urandom(5 << 20)
    src = tmp_path / "in.bin"
    src.write_bytes(payload)
    with open(src, "rb") as stdin:
        r = client.run(server, None, stdin=stdin, timeout=60,
                       extra_args=["-W", f"{HOST}:{echo_port}"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(EOF_MARK)
    got = r.stdout[:-len(EOF_MARK)]
    assert len(got) == len(payload)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_closed_port(server, make_client):
    client = make_client(server.backend, trust=server)
    r = client.run(server, None, input=b"x", timeout=30,
                   extra_args=["-W", f"{HOST}:{_closed_port()}"])
    assert r.returncode == 255
    assert b"ssh3: stdio forwarding failed:" in r.stderr, r.stderr
    assert r.stdout == b""


def test_command_with_w_refused(server, make_client):
    client = make_client(server.backend, trust=server)
    r = client.run(server, "true", timeout=30, extra_args=["-W", f"{HOST}:22"])
    assert r.returncode == 255 and b"-W" in r.stderr


# ---------------------------------------------------------------- OpenSSH over ssh3

SSHD = "/usr/sbin/sshd"


@pytest.fixture
def sshd(tmp_path: Path, user_key: Path) -> Iterator[int]:
    """A private sshd on 127.0.0.1 (own host key and config), stopped by PID."""
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        pytest.skip("openssh-server / openssh-client not installed")
    if os.geteuid() == 0:  # sshd wants its privilege separation directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    d = tmp_path / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")],
                   check=True, timeout=30, capture_output=True)
    auth = d / "authorized_keys"
    auth.write_bytes(user_key.with_name(user_key.name + ".pub").read_bytes())
    auth.chmod(0o600)
    port = _closed_port()
    config = d / "sshd_config"
    config.write_text(f"""\
Port {port}
ListenAddress {HOST}
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {auth}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
""")
    log = open(d / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex((HOST, port)) == 0:
                    break
            assert proc.poll() is None, (d / "sshd.log").read_text()
            time.sleep(0.05)
        yield port
    finally:
        stop_process(proc)
        log.close()


def test_openssh_proxycommand(server, make_client, user_key, sshd):
    client = make_client(server.backend, trust=server)
    proxy = shlex.join(client.argv(server, None, extra_args=["-W", "%h:%p"]))
    argv = ["ssh", "-F", "/dev/null", "-o", f"ProxyCommand={proxy}",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(user_key),
            "-p", str(sshd), f"{USER}@{HOST}", "echo via-ssh3"]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                       env=client.env(), start_new_session=True)
    assert (r.returncode, r.stdout) == (0, b"via-ssh3\n"), r.stderr
