"""Which identities the real `ssh3` offers, in which order, and how it unlocks them:
a real ssh3-server, real ssh-agents, the client run as a subprocess in a new session
(no terminal, so passphrases can only come through SSH_ASKPASS)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import termios
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_helpers import (
    HOST,
    USER,
    Client,
    PtyProcess,
    Server,
    exec_on,
    find_program,
    run_async,
)
from test_agent import SshAgent, keygen, start_agent  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(
    not (shutil.which("ssh-agent") and shutil.which("ssh-add") and shutil.which("ssh-keygen")),
    reason="OpenSSH client tools not installed")

PASSPHRASE = "correct horse"


@dataclass
class Keys:
    agent_ok: Path  # authorized; put in agents
    agent_no: Path  # not authorized; put in agents
    file_ok: Path  # authorized, no passphrase
    enc_ok: Path  # authorized, encrypted with PASSPHRASE (with .pub beside it)
    enc_plain: Path  # the same key as enc_ok, unencrypted (to put in an agent)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("idkeys")
    k = Keys(*(keygen(d / n, "-t", "ed25519", comment=n)
               for n in ("agent_ok", "agent_no", "file_ok", "enc_ok")), enc_plain=d / "enc_plain")
    shutil.copy(k.enc_ok, k.enc_plain)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", PASSPHRASE, "-a", "4",
                    "-f", str(k.enc_ok)], check=True, capture_output=True, timeout=30,
                   stdin=subprocess.DEVNULL)
    return k


@pytest.fixture(scope="module")
def id_server(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("idserver")
    authorized = d / "authorized_keys"
    authorized.write_text("".join(Path(f"{k}.pub").read_text()
                                  for k in (keys.agent_ok, keys.file_ok, keys.enc_ok)))
    authorized.chmod(0o600)
    # these tests fail on purpose: no per-source penalties for 127.0.0.1
    server = Server(d / "server", "aioquic", authorized,
                    extra_args=["-per-source-penalties", "no"])
    with server.running():
        yield server


@pytest.fixture
def run(tmp_path: Path, id_server: Server) -> Callable[..., subprocess.CompletedProcess]:
    """`run(*flags, agent=, env=)`: `ssh3 -v FLAGS host 'echo ok'` with its own HOME
    (no key files unless the test puts some there) and no terminal."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    Client(home, Path("/nonexistent")).trust(id_server)
    askpass = tmp_path / "askpass.sh"
    askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$1" >> "$ASKPASS_LOG"\n'
                       'printf "%s\\n" "$ASKPASS_ANSWER"\n')
    askpass.chmod(0o700)

    def run(*flags: str, agent: SshAgent | None = None, answer: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        e = dict(os.environ)
        for var in ("SSH3_QUIC_BACKEND", "SSH_AUTH_SOCK", "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE",
                    "DISPLAY", "WAYLAND_DISPLAY"):
            e.pop(var, None)
        e["HOME"] = str(home)
        e["ASKPASS_LOG"] = str(tmp_path / "asked")
        if agent is not None:
            e["SSH_AUTH_SOCK"] = agent.sock
        if answer is not None:
            e.update(SSH_ASKPASS=str(askpass), ASKPASS_ANSWER=answer)
        e.update(env or {})
        argv = [find_program("ssh3"), "-v", "-quic-backend", "aioquic", *flags,
                id_server.target(), "echo ok"]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=e,
                              timeout=60, start_new_session=True)

    run.home = home  # type: ignore[attr-defined]
    run.asked = tmp_path / "asked"  # type: ignore[attr-defined]
    return run


def ok(r: subprocess.CompletedProcess) -> bool:
    return (r.returncode, r.stdout) == (0, b"ok\n")


def refused(r: subprocess.CompletedProcess) -> list[str]:
    """Labels of the identities the server refused, in order (from the client's -v log)."""
    return re.findall(r"identity (.+) refused", r.stderr.decode())


def asked(run: Callable[..., object]) -> list[str]:
    path: Path = run.asked  # type: ignore[attr-defined]
    return path.read_text().splitlines() if path.exists() else []


def test_login_with_only_an_agent_key(run, start_agent, keys):  # noqa: F811
    agent = start_agent(keys.agent_ok)
    r = run(agent=agent)
    assert ok(r), r.stderr
    assert refused(r) == []
    assert "agent_ok (agent)" in r.stderr.decode()


def test_agent_key_first_then_the_default_file(run, start_agent, keys):  # noqa: F811
    shutil.copy(keys.file_ok, run.home / ".ssh" / "id_ed25519")
    agent = start_agent(keys.agent_no)
    r = run(agent=agent)
    assert ok(r), r.stderr
    assert refused(r) == ["agent_no (agent)"]
    # the same with -i: the agent is still tried first
    r = run("-i", str(keys.file_ok), agent=agent)
    assert ok(r), r.stderr
    assert refused(r) == ["agent_no (agent)"]


def test_identities_only_ignores_the_agent(run, start_agent, keys):  # noqa: F811
    agent = start_agent(keys.agent_ok)
    r = run("-i", str(keys.agent_no), agent=agent)
    assert ok(r), r.stderr  # the agent's key, tried before the file
    r = run("-i", str(keys.agent_no), "-o", "IdentitiesOnly=yes", agent=agent)
    assert r.returncode == 255 and r.stdout == b"", r.stderr
    assert refused(r) == [str(keys.agent_no)]
    assert f"tried: publickey {keys.agent_no}." in r.stderr.decode()


def test_encrypted_key_through_askpass(run, keys):
    # no terminal + a display: OpenSSH's rule for using SSH_ASKPASS
    r = run("-i", str(keys.enc_ok), answer=PASSPHRASE, env={"DISPLAY": ":99"})
    assert ok(r), r.stderr
    assert asked(run) == [f"Enter passphrase for key '{keys.enc_ok}': "]
    # SSH_ASKPASS_REQUIRE=never: nobody to ask, the key is skipped
    r = run("-i", str(keys.enc_ok), answer=PASSPHRASE,
            env={"DISPLAY": ":99", "SSH_ASKPASS_REQUIRE": "never"})
    assert r.returncode == 255, r.stderr
    assert b"no terminal to ask for a passphrase" in r.stderr
    assert b"no usable identity" in r.stderr
    assert len(asked(run)) == 1


def test_passphrase_on_the_terminal(run, id_server, keys):
    """With a terminal, /dev/tty is used (echo off), even with SSH_ASKPASS set."""
    env = dict(os.environ)
    for var in ("SSH3_QUIC_BACKEND", "SSH_AUTH_SOCK", "SSH_ASKPASS_REQUIRE"):
        env.pop(var, None)
    env.update(HOME=str(run.home), SSH_ASKPASS="/bin/false", DISPLAY=":99")
    proc = PtyProcess([find_program("ssh3"), "-quic-backend", "aioquic", "-i", str(keys.enc_ok),
                       id_server.target(), "echo ok"], env)
    try:
        prompt = re.escape(f"Enter passphrase for key '{keys.enc_ok}': ".encode())
        proc.expect(prompt)
        proc.write(b"not it\n")
        proc.expect(re.escape(f"ssh3: wrong passphrase for {keys.enc_ok}".encode()))
        proc.expect(prompt)
        proc.write(PASSPHRASE.encode() + b"\n")
        proc.expect(b"ok\r\n")
        assert proc.wait() == 0
        assert b"not it" not in proc.output and PASSPHRASE.encode() not in proc.output
    finally:
        proc.close()
    # Ctrl-C at the prompt: exit 130 with the terminal's echo back on
    proc = PtyProcess([find_program("ssh3"), "-quic-backend", "aioquic", "-i", str(keys.enc_ok),
                       id_server.target(), "echo ok"], env)
    try:
        proc.expect(prompt)
        assert not termios.tcgetattr(proc.master)[3] & termios.ECHO
        proc.write(b"\x03")
        assert proc.wait() == 130
        assert termios.tcgetattr(proc.master)[3] & termios.ECHO
    finally:
        proc.close()


def test_wrong_passphrase_three_times_then_next_identity(run, keys):
    r = run("-i", str(keys.enc_ok), "-i", str(keys.file_ok), answer="wrong",
            env={"SSH_ASKPASS_REQUIRE": "force"})
    assert ok(r), r.stderr
    assert r.stderr.decode().count(f"ssh3: wrong passphrase for {keys.enc_ok}\n") == 3
    assert len(asked(run)) == 3
    assert refused(r) == []


def test_passphrase_is_asked_only_when_the_key_is_tried(run, start_agent, keys):  # noqa: F811
    r = run("-i", str(keys.file_ok), "-i", str(keys.enc_ok), answer="wrong",
            env={"SSH_ASKPASS_REQUIRE": "force"})
    assert ok(r), r.stderr
    assert asked(run) == []
    # after the agent's key is refused, the encrypted file is tried: now it is asked
    agent = start_agent(keys.agent_no)
    r = run("-i", str(keys.enc_ok), agent=agent, answer=PASSPHRASE,
            env={"SSH_ASKPASS_REQUIRE": "force"})
    assert ok(r), r.stderr
    assert refused(r) == ["agent_no (agent)"]
    assert len(asked(run)) == 1


def test_agent_signs_for_an_encrypted_file_it_holds(run, start_agent, keys):  # noqa: F811
    agent = start_agent(keys.agent_no, keys.enc_plain)
    r = run("-i", str(keys.enc_ok), "-o", "IdentitiesOnly=yes", agent=agent, answer="wrong",
            env={"SSH_ASKPASS_REQUIRE": "force"})
    assert ok(r), r.stderr
    assert asked(run) == []
    assert refused(r) == []  # agent_no is not one of the files: not offered
    assert f"{keys.enc_ok} (agent)" in r.stderr.decode()


def test_pubkey_for_agent(run, start_agent, keys):  # noqa: F811
    agent = start_agent(keys.agent_no, keys.agent_ok)
    r = run("-pubkey-for-agent", f"{keys.agent_ok}.pub", agent=agent)
    assert ok(r), r.stderr
    assert refused(r) == []
    r = run("-pubkey-for-agent", f"{keys.agent_no}.pub", agent=agent)
    assert r.returncode == 255, r.stderr
    assert refused(r) == ["agent_no (agent)"]


def test_library_skips_unavailable_identities_and_keeps_the_connection_alive(
        id_server, keys, monkeypatch):
    """establish(): an identity raising IdentityUnavailable is skipped; while a slow
    one is prepared (a passphrase being typed), PINGs keep an idle-timeout-prone
    connection alive."""
    import ssh3.aio.client as client_mod
    from ssh3.aio.client import (
        ConnectParams,
        Identity,
        IdentityUnavailable,
        establish,
        open_connection,
        private_key_identity,
    )
    from ssh3.auth.keys import load_private_key

    monkeypatch.setattr(client_mod, "KEEPALIVE_INTERVAL", 0.3)
    good = private_key_identity("good", load_private_key(str(keys.file_ok)))
    calls: list[str] = []

    def unavailable(user: str, conv_id: bytes) -> str:
        calls.append("unavailable")
        raise IdentityUnavailable("no passphrase")

    async def slow(user: str, conv_id: bytes) -> str:
        calls.append("slow")
        await asyncio.sleep(2.5)  # longer than the 1 s idle timeout below
        result = good.make_authorization(user, conv_id)
        assert isinstance(result, str)
        return result

    params = ConnectParams(host=HOST, port=id_server.port, path=id_server.url_path, user=USER,
                           identities=[Identity("unavailable", unavailable),
                                       Identity("slow", slow)],
                           backend="aioquic", insecure=True, idle_timeout=1.0)

    async def scenario() -> bytes:
        async with open_connection(params) as proto:
            conv = await establish(proto, params)
            out, _err, status = await exec_on(conv.open_channel("session"), b"echo alive")
            assert status == 0
            return out

    assert run_async(scenario(), timeout=30) == b"alive\n"
    assert calls == ["unavailable", "slow"]
