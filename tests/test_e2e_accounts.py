"""Sessions run as the authenticated user; password login through PAM.

These need root: only root can switch to another account and set its password.
CI runs as root (and .ci/run creates the account); elsewhere they are skipped
with that reason.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import Server, make_key, run_async

from ssh3.aio.client import ConnectParams, Identity, SSH3ClientError, establish, open_connection
from ssh3.auth.password import basic_authorization
from ssh3.messages import ChannelData, ExecRequest, ExitStatusRequest

ACCOUNT = "ssh3test"
PASSWORD = "Corr3ct-horse-battery"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture(scope="module")
def account() -> Iterator[pwd.struct_passwd]:
    try:
        entry = pwd.getpwnam(ACCOUNT)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", ACCOUNT], check=True, timeout=30)
        entry = pwd.getpwnam(ACCOUNT)
    subprocess.run(["chpasswd"], input=f"{ACCOUNT}:{PASSWORD}".encode(), check=True,
                   timeout=30)
    yield entry


@pytest.fixture
def server(tmp_path: Path, account: pwd.struct_passwd) -> Iterator[tuple[Server, Path]]:
    key = make_key(tmp_path / "keys")
    keys_dir = tmp_path / "authorized"
    keys_dir.mkdir()
    (keys_dir / ACCOUNT).write_bytes(key.with_name(key.name + ".pub").read_bytes())
    srv = Server(tmp_path / "srv", "aioquic", keys_dir / "%u",
                 extra_args=["-enable-password-login"])
    srv.start()
    try:
        yield srv, key
    finally:
        srv.stop()


def _run(srv: Server, key: Path, command: str) -> subprocess.CompletedProcess:
    argv = ["ssh3", "-insecure", "-i", str(key), f"{ACCOUNT}@{srv.target()}", command]
    return subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                          start_new_session=True)


def test_session_runs_as_the_user(server: tuple[Server, Path],
                                  account: pwd.struct_passwd) -> None:
    srv, key = server
    r = _run(srv, key, "id -u; id -g; id -G; pwd; echo $HOME $USER $LOGNAME $SHELL; "
                       "echo $PATH; echo $SSH3_CONNECTION")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    expected_groups = sorted(os.getgrouplist(ACCOUNT, account.pw_gid))
    assert lines[0] == str(account.pw_uid)
    assert lines[1] == str(account.pw_gid)
    assert sorted(int(g) for g in lines[2].split()) == expected_groups
    assert lines[3] == account.pw_dir
    assert lines[4] == f"{account.pw_dir} {ACCOUNT} {ACCOUNT} {account.pw_shell}"
    assert "/usr/bin" in lines[5].split(":")
    client_ip, client_port, server_ip, server_port = lines[6].split()
    assert client_ip == server_ip == "127.0.0.1"
    assert int(server_port) == srv.port and int(client_port) > 0


def test_login_shell_is_the_users(server: tuple[Server, Path],
                                  account: pwd.struct_passwd) -> None:
    srv, key = server
    r = _run(srv, key, "echo $0")  # exec runs `<login shell> -c <command>`
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == account.pw_shell


async def _password_exec(srv: Server, user: str, password: str) -> bytes:
    ident = Identity("password", lambda u, _cid: basic_authorization(u, password))
    params = ConnectParams(host="127.0.0.1", port=srv.port, path=srv.url_path, user=user,
                           identities=[ident], insecure=True)
    async with open_connection(params) as protocol:
        conv = await establish(protocol, params)
        channel = conv.open_channel("session")
        channel.send(ExecRequest(b"id -un"))
        out = b""
        while True:
            msg = await channel.read()
            if isinstance(msg, ChannelData):
                out += msg.data
            elif msg is None or isinstance(msg, ExitStatusRequest):
                return out


def test_password_login(server: tuple[Server, Path]) -> None:
    srv, _ = server
    assert run_async(_password_exec(srv, ACCOUNT, PASSWORD)) == f"{ACCOUNT}\n".encode()
    assert "method=password" in srv.log() and "auth accepted" in srv.log()


@pytest.mark.parametrize("user, password, reason", [
    (ACCOUNT, "wrong", "wrong password"),
    ("no-such-user-ssh3", PASSWORD, "no such user"),
])
def test_password_refused(server: tuple[Server, Path], user: str, password: str,
                          reason: str) -> None:
    srv, _ = server
    with pytest.raises(SSH3ClientError, match="401"):
        run_async(_password_exec(srv, user, password))
    assert f"reason={reason}" in srv.log()


def test_basic_user_must_match_url_user(server: tuple[Server, Path]) -> None:
    srv, _ = server

    async def attempt() -> None:
        ident = Identity("password", lambda _u, _cid: basic_authorization(ACCOUNT, PASSWORD))
        params = ConnectParams(host="127.0.0.1", port=srv.port, path=srv.url_path,
                               user="root", identities=[ident], insecure=True)
        async with open_connection(params) as protocol:
            await establish(protocol, params)

    with pytest.raises(SSH3ClientError, match="401"):
        run_async(attempt())
    assert "Basic user differs from the URL user" in srv.log()


def test_password_login_is_off_by_default(tmp_path: Path, account: pwd.struct_passwd) -> None:
    key = make_key(tmp_path / "keys")
    srv = Server(tmp_path / "srv", "aioquic", key.with_name(key.name + ".pub"))
    srv.start()
    try:
        with pytest.raises(SSH3ClientError, match="401"):
            run_async(_password_exec(srv, ACCOUNT, PASSWORD))
        assert "password login is disabled" in srv.log()
    finally:
        srv.stop()


def test_client_use_password_with_askpass(server: tuple[Server, Path], tmp_path: Path) -> None:
    """`ssh3 -use-password`: the password comes from SSH_ASKPASS (no terminal)."""
    srv, _ = server
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho '{PASSWORD}'\n")
    askpass.chmod(0o700)
    env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
               HOME=str(tmp_path))
    argv = ["ssh3", "-insecure", "-use-password", f"{ACCOUNT}@{srv.target()}", "id -un"]
    r = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                       env=env, start_new_session=True)
    assert (r.returncode, r.stdout) == (0, f"{ACCOUNT}\n".encode()), r.stderr
    askpass.write_text("#!/bin/sh\necho wrong\n")
    r = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                       env=dict(env, SSH3_TEST="1"), start_new_session=True)
    assert r.returncode == 255 and b"401" in r.stderr, r.stderr
    assert r.stderr.count(b"Permission denied, please try again.") == 2  # 3 prompts
