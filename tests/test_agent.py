"""The ssh-agent client (ssh3.auth.agent) against a real `ssh-agent`, and the
client's identity list and passphrase handling (ssh3_client.identities) in-process.

Every ssh-agent is started as `ssh-agent -D -a SOCK` (no daemonising) and stopped
by its PID.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from ssh3.aio.client import IdentityUnavailable
from ssh3.auth.agent import (
    MAX_MESSAGE_SIZE,
    SSH_AGENT_RSA_SHA2_256,
    AgentError,
    AgentKey,
    connect_agent,
    ecdsa_signature_to_jws,
    list_agent_keys,
    signature_to_jws,
)
from ssh3.auth.jwt_token import finish_token, token_signing_input, verify_token
from ssh3_client.identities import (
    file_identity,
    identity_options,
    load_identities,
    make_prompter,
    public_blob_of_file,
    public_blob_of_key_file,
)

pytestmark = pytest.mark.skipif(
    not (shutil.which("ssh-agent") and shutil.which("ssh-add") and shutil.which("ssh-keygen")),
    reason="OpenSSH client tools not installed")

CONV_ID = hashlib.sha256(b"agent test conversation").digest()
USER = "alice"
KEY_SPECS = {  # name -> ssh-keygen arguments
    "rsa": ["-t", "rsa", "-b", "2048"],
    "ed25519": ["-t", "ed25519"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
}
ALGS = {"rsa": "RS256", "ed25519": "EdDSA", "ecdsa256": "ES256", "ecdsa384": "ES384"}


def run_async(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def keygen(path: Path, *spec: str, passphrase: str = "", comment: str | None = None) -> Path:
    subprocess.run(["ssh-keygen", "-q", *spec, "-N", passphrase, "-a", "4",
                    "-C", comment or path.name, "-f", str(path)],
                   check=True, timeout=60, stdin=subprocess.DEVNULL, capture_output=True)
    return path


def pub_blob(key: Path) -> bytes:
    return base64.b64decode(Path(f"{key}.pub").read_text().split()[1])


class SshAgent:
    """A real ssh-agent on a private socket, stopped by PID."""

    def __init__(self) -> None:
        # a short directory: unix socket paths are limited to 107 bytes
        self.dir = Path(tempfile.mkdtemp(prefix="ssh3-agent-", dir="/tmp"))
        self.sock = str(self.dir / "agent.sock")
        self.proc = subprocess.Popen(["ssh-agent", "-D", "-a", self.sock],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("ssh-agent did not start")
            time.sleep(0.01)

    def add(self, *keys: Path) -> None:
        env = {**os.environ, "SSH_AUTH_SOCK": self.sock}
        for var in ("SSH_ASKPASS", "DISPLAY", "WAYLAND_DISPLAY"):
            env.pop(var, None)
        subprocess.run(["ssh-add", *map(str, keys)], env=env, check=True, timeout=30,
                       stdin=subprocess.DEVNULL, capture_output=True, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def start_agent() -> Iterator[Callable[..., SshAgent]]:
    """Factory: `start_agent(key, ...)` runs an ssh-agent holding those keys, in order."""
    agents: list[SshAgent] = []

    def start(*keys: Path) -> SshAgent:
        agent = SshAgent()
        agents.append(agent)
        if keys:
            agent.add(*keys)
        return agent

    yield start
    for agent in agents:
        agent.stop()
    assert all(a.proc.poll() is not None for a in agents)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("agentkeys")
    return {name: keygen(d / name, *spec, comment=f"{name}@test")
            for name, spec in KEY_SPECS.items()}


def public_key(key: Path) -> Any:
    return load_ssh_public_key(Path(f"{key}.pub").read_bytes())


# ------------------------------------------------------------------ real agent


def test_list_keys_in_agent_order(start_agent, keys):
    order = ["rsa", "ed25519", "ecdsa384", "ecdsa256"]
    agent = start_agent(*(keys[n] for n in order))
    listed = run_async(list_agent_keys(agent.sock))
    assert [k.blob for k in listed] == [pub_blob(keys[n]) for n in order]
    assert [k.comment for k in listed] == [f"{n}@test" for n in order]
    assert [k.algorithm for k in listed] == [ALGS[n] for n in order]
    assert listed[0].key_type == "ssh-rsa"
    assert listed[1].openssh() == " ".join(Path(f"{keys['ed25519']}.pub").read_text().split()[:2])
    fp = subprocess.run(["ssh-keygen", "-l", "-f", f"{keys['ed25519']}.pub"], check=True,
                        capture_output=True, text=True, timeout=30).stdout.split()[1]
    assert listed[1].fingerprint == fp


def test_empty_agent(start_agent):
    agent = start_agent()
    assert run_async(list_agent_keys(agent.sock)) == []


@pytest.mark.parametrize("name", list(KEY_SPECS))
def test_agent_signed_jwt_verifies(start_agent, keys, name):
    agent = start_agent(keys[name])

    async def sign_tokens() -> list[str]:
        async with connect_agent(agent.sock) as conn:
            (key,) = await conn.list_keys()
            tokens = []
            # several ECDSA signatures: some r or s are shorter than the field
            for _ in range(8 if name.startswith("ecdsa") else 1):
                signing_input = token_signing_input(key.algorithm, USER, CONV_ID)
                sig = await conn.sign_jws(key, signing_input.encode())
                tokens.append(finish_token(signing_input, sig))
            return tokens

    tokens = run_async(sign_tokens())
    expected = public_key(keys[name])
    for token in tokens:
        header = base64.urlsafe_b64decode(token.split(".")[0] + "==")
        assert header == f'{{"alg":"{ALGS[name]}","typ":"JWT"}}'.encode()
        assert verify_token(token, [expected], USER, CONV_ID) is expected


def test_rsa_is_signed_with_sha256(start_agent, keys):
    agent = start_agent(keys["rsa"])

    async def both() -> tuple[AgentKey, bytes, bytes]:
        async with connect_agent(agent.sock) as conn:
            (key,) = await conn.list_keys()
            sha2 = await conn.sign_raw(key.blob, b"data", SSH_AGENT_RSA_SHA2_256)
            sha1 = await conn.sign_raw(key.blob, b"data", 0)
            return key, sha2, sha1

    key, sha2, sha1 = run_async(both())
    assert sha2[4:4 + struct.unpack(">I", sha2[:4])[0]] == b"rsa-sha2-256"
    assert len(signature_to_jws(key, sha2)) == 256
    with pytest.raises(AgentError, match="SHA-1"):
        signature_to_jws(key, sha1)


def test_sign_with_a_key_the_agent_lacks_fails(start_agent, keys):
    agent = start_agent(keys["rsa"])
    stranger = AgentKey(pub_blob(keys["ed25519"]), "")

    async def sign() -> bytes:
        async with connect_agent(agent.sock) as conn:
            return await conn.sign_jws(stranger, b"x")

    with pytest.raises(AgentError, match="refused"):
        run_async(sign())


def test_certificates_are_listed_but_unusable(start_agent, keys, tmp_path):
    ca = keygen(tmp_path / "ca", "-t", "ed25519")
    user = tmp_path / "user"
    shutil.copy(keys["ed25519"], user)
    shutil.copy(f"{keys['ed25519']}.pub", f"{user}.pub")
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "id", "-n", USER, f"{user}.pub"],
                   check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    agent = start_agent(user)  # ssh-add adds user-cert.pub too
    listed = run_async(list_agent_keys(agent.sock))
    types = {k.key_type: k.algorithm for k in listed}
    assert types == {"ssh-ed25519": "EdDSA", "ssh-ed25519-cert-v01@openssh.com": None}


def test_no_agent_socket(tmp_path):
    with pytest.raises(AgentError, match="cannot connect"):
        run_async(list_agent_keys(str(tmp_path / "nothing.sock")))
    with pytest.raises(AgentError, match="SSH_AUTH_SOCK"):
        run_async(list_agent_keys(""))


# ------------------------------------------------------------------ conversions


def mpint(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b""
    return struct.pack(">I", len(raw)) + raw


def test_ecdsa_signature_conversion():
    high = (1 << 255) + 5  # high bit set: the mpint has a leading zero byte
    assert len(mpint(high)) == 4 + 33
    out = ecdsa_signature_to_jws(mpint(high) + mpint(7), 32)
    assert out == high.to_bytes(32, "big") + (7).to_bytes(32, "big")
    assert ecdsa_signature_to_jws(mpint(0) + mpint(1), 48) == bytes(95) + b"\x01"
    with pytest.raises(AgentError, match="too long"):
        ecdsa_signature_to_jws(mpint(1 << 256) + mpint(1), 32)
    with pytest.raises(AgentError, match="negative"):
        ecdsa_signature_to_jws(struct.pack(">I", 1) + b"\x80" + mpint(1), 32)
    with pytest.raises(AgentError, match="trailing"):
        ecdsa_signature_to_jws(mpint(1) + mpint(1) + b"x", 32)
    with pytest.raises(AgentError, match="truncated"):
        ecdsa_signature_to_jws(mpint(1), 32)


def test_signature_format_must_match_key():
    key = AgentKey(struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(32), "")
    good = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 64) + bytes(64)
    assert signature_to_jws(key, good) == bytes(64)
    bad = struct.pack(">I", 7) + b"ssh-rsa" + struct.pack(">I", 64) + bytes(64)
    with pytest.raises(AgentError, match="expected"):
        signature_to_jws(key, bad)
    short = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 3) + bytes(3)
    with pytest.raises(AgentError, match="malformed"):
        signature_to_jws(key, short)
    dsa = AgentKey(struct.pack(">I", 7) + b"ssh-dss", "")
    assert dsa.algorithm is None
    with pytest.raises(AgentError, match="cannot use"):
        signature_to_jws(dsa, good)


# ------------------------------------------------------------------ misbehaving agents


@contextlib.asynccontextmanager
async def fake_agent(reply: bytes | None) -> Any:
    """A unix server that answers every request with `reply` (None: never answers)."""
    directory = tempfile.mkdtemp(prefix="ssh3-fake-", dir="/tmp")
    path = os.path.join(directory, "s")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            (n,) = struct.unpack(">I", await reader.readexactly(4))
            await reader.readexactly(n)
            if reply is not None:
                writer.write(reply)
                await writer.drain()
                writer.close()
            else:
                await asyncio.sleep(30)

    server = await asyncio.start_unix_server(serve, path)
    try:
        yield path
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("reply, match", [
    (struct.pack(">I", MAX_MESSAGE_SIZE + 1), "limit"),
    (struct.pack(">I", 0), "limit"),
    (struct.pack(">I", 100) + b"\x0c", "closed"),
    (b"", "closed"),
    (struct.pack(">IB", 1, 5), "refused"),
    (struct.pack(">IB", 1, 99), "unexpected"),
    (struct.pack(">IBI", 5, 12, 1_000_000), "malformed"),
    (struct.pack(">IBII", 13, 12, 1, 100) + b"abcd", "truncated"),
])
def test_malformed_agent_replies(reply, match):
    async def go() -> None:
        async with fake_agent(reply) as path:
            await list_agent_keys(path)

    with pytest.raises(AgentError, match=match):
        run_async(go())


def test_silent_agent_times_out():
    async def go() -> None:
        async with fake_agent(None) as path, connect_agent(path) as conn:
            await conn.list_keys(timeout=0.3)

    started = time.monotonic()
    with pytest.raises(AgentError, match="did not answer"):
        run_async(go())
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------ identity order


def args(*identities: str, options: dict[str, str] | None = None,
         pubkeys: tuple[str, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(identities=list(identities), options=options or {},
                           pubkeys_for_agent=list(pubkeys))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    (h / ".ssh").mkdir(parents=True)
    return h


def labels(identities: list[Any]) -> list[str]:
    return [i.label for i in identities]


def test_agent_keys_come_first_then_files(start_agent, keys, home, tmp_path):
    extra = keygen(tmp_path / "extra", "-t", "ed25519", comment="extra key")
    agent = start_agent(keys["ecdsa256"], keys["rsa"], extra)
    default = home / ".ssh" / "id_ed25519"
    shutil.copy(keys["ed25519"], default)
    env = {"HOME": str(home), "SSH_AUTH_SOCK": agent.sock}
    got = labels(run_async(load_identities(args(), env)))
    assert got == ["ecdsa256@test (agent)", "rsa@test (agent)", "extra key (agent)",
                   str(default)]
    # -i files come after the agent keys too; IdentitiesOnly=yes drops the agent
    got = labels(run_async(load_identities(args(str(keys["ed25519"])), env)))
    assert got[:3] == ["ecdsa256@test (agent)", "rsa@test (agent)", "extra key (agent)"]
    assert got[3:] == [str(keys["ed25519"])]
    only = args(str(keys["ed25519"]), options={"identitiesonly": "yes"})
    assert labels(run_async(load_identities(only, env))) == [str(keys["ed25519"])]
    # IdentityAgent=none disables the agent
    off = args(options={"identityagent": "none"})
    assert labels(run_async(load_identities(off, env))) == [str(default)]


def test_file_held_by_agent_is_signed_by_the_agent(start_agent, keys, tmp_path):
    # the agent holds ecdsa256 and rsa; -i names rsa and ed25519, IdentitiesOnly=yes
    agent = start_agent(keys["ecdsa256"], keys["rsa"])
    env = {"HOME": str(tmp_path), "SSH_AUTH_SOCK": agent.sock}
    a = args(str(keys["ed25519"]), str(keys["rsa"]), options={"identitiesonly": "yes"})
    assert labels(run_async(load_identities(a, env))) == [
        f"{keys['rsa']} (agent)", str(keys["ed25519"])]


def test_pubkey_for_agent_selects_one_agent_key(start_agent, keys, tmp_path, capsys):
    agent = start_agent(keys["ecdsa256"], keys["rsa"], keys["ed25519"])
    env = {"HOME": str(tmp_path), "SSH_AUTH_SOCK": agent.sock}
    a = args(pubkeys=(f"{keys['rsa']}.pub",))
    assert labels(run_async(load_identities(a, env))) == ["rsa@test (agent)"]
    a = args(pubkeys=(f"{keys['rsa']}.pub",), options={"identitiesonly": "yes"})
    assert labels(run_async(load_identities(a, env))) == ["rsa@test (agent)"]
    a = args(pubkeys=(f"{keys['ecdsa384']}.pub",))
    assert labels(run_async(load_identities(a, env))) == []
    assert "agent holds none" in capsys.readouterr().err


def test_unusable_agent_keys_are_skipped(start_agent, keys, tmp_path, caplog):
    ca = keygen(tmp_path / "ca", "-t", "ed25519")
    user = tmp_path / "user"
    shutil.copy(keys["ed25519"], user)
    shutil.copy(f"{keys['ed25519']}.pub", f"{user}.pub")
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "id", "-n", USER, f"{user}.pub"],
                   check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    agent = start_agent(user)
    env = {"HOME": str(tmp_path), "SSH_AUTH_SOCK": agent.sock}
    with caplog.at_level("DEBUG", logger="ssh3.identities"):
        got = labels(run_async(load_identities(args(), env)))
    assert got == ["ed25519@test (agent)"]
    assert "cannot sign with a ssh-ed25519-cert-v01@openssh.com key" in caplog.text


def test_public_key_of_an_encrypted_key_without_pub_file(tmp_path):
    key = keygen(tmp_path / "enc", "-t", "ed25519", passphrase="secret")
    blob = pub_blob(key)
    os.remove(f"{key}.pub")
    assert public_blob_of_key_file(str(key)) == blob
    assert public_blob_of_file(str(tmp_path / "missing")) is None
    (tmp_path / "junk").write_text("not a key\n")
    assert public_blob_of_file(str(tmp_path / "junk")) is None


def test_options_are_read_like_openssh(tmp_path):
    env = {"HOME": str(tmp_path), "SSH_AUTH_SOCK": "/x/agent"}
    o = identity_options(args(options={"batchmode": "yes", "numberofpasswordprompts": "1",
                                       "identitiesonly": "Yes"}), env)
    assert (o.batch_mode, o.password_prompts, o.identities_only, o.files) == (True, 1, True, [])
    assert o.agent_socket == "/x/agent"
    assert identity_options(args(), {"HOME": str(tmp_path)}).agent_socket is None


# ------------------------------------------------------------------ passphrases


def test_passphrase_is_asked_again_after_a_wrong_one(tmp_path, capsys):
    key = keygen(tmp_path / "enc", "-t", "ed25519", passphrase="right one")
    answers = [b"wrong", b"right one"]
    asked: list[str] = []

    async def prompter(prompt: str) -> bytes | None:
        asked.append(prompt)
        return answers.pop(0)

    identity = file_identity(str(key), prompter, identity_options(args(), {}))
    token = run_async(identity.make_authorization(USER, CONV_ID))  # type: ignore[arg-type]
    assert token.startswith("Bearer ")
    verify_token(token[7:], [public_key(key)], USER, CONV_ID)
    assert asked == [f"Enter passphrase for key '{key}': "] * 2
    assert capsys.readouterr().err == f"ssh3: wrong passphrase for {key}\n"
    # loaded once: trying it again does not ask
    run_async(identity.make_authorization(USER, CONV_ID))  # type: ignore[arg-type]
    assert len(asked) == 2


@pytest.mark.parametrize("answers, prompts", [
    ([b"a", b"b", b"c", b"never asked"], 3),  # three wrong ones, then give up
    ([b""], 1),  # an empty answer skips the key at once
    ([None], 1),  # so does no answer (EOF, askpass failed)
])
def test_key_is_skipped_without_a_right_passphrase(tmp_path, answers, prompts):
    key = keygen(tmp_path / "enc", "-t", "ed25519", passphrase="right one")
    asked: list[str] = []

    async def prompter(prompt: str) -> bytes | None:
        asked.append(prompt)
        return answers.pop(0)

    identity = file_identity(str(key), prompter, identity_options(args(), {}))
    with pytest.raises(IdentityUnavailable):
        run_async(identity.make_authorization(USER, CONV_ID))  # type: ignore[arg-type]
    assert len(asked) == prompts


def test_batch_mode_never_asks(tmp_path):
    key = keygen(tmp_path / "enc", "-t", "ed25519", passphrase="right one")

    async def prompter(prompt: str) -> bytes | None:
        raise AssertionError("asked")

    opts = identity_options(args(options={"batchmode": "yes"}), {})
    with pytest.raises(IdentityUnavailable):
        run_async(file_identity(str(key), prompter, opts).make_authorization(USER, CONV_ID))  # type: ignore[arg-type]


def write_askpass(directory: Path) -> Path:
    script = directory / "askpass.sh"
    script.write_text('#!/bin/sh\nprintf "%s\\n" "$1" >> "$ASKPASS_LOG"\n'
                      'printf "%s\\r\\nignored\\n" "$ASKPASS_ANSWER"\n'
                      'exit "${ASKPASS_EXIT:-0}"\n')
    script.chmod(0o700)
    return script


@pytest.mark.parametrize("extra, result", [
    ({"SSH_ASKPASS_REQUIRE": "force"}, b"pw 1"),
    ({"SSH_ASKPASS_REQUIRE": "force", "ASKPASS_EXIT": "1"}, None),
    ({"SSH_ASKPASS_REQUIRE": "prefer", "DISPLAY": ":9"}, b"pw 1"),
])
def test_askpass_program(tmp_path, monkeypatch, extra, result):
    script = write_askpass(tmp_path)
    log = tmp_path / "asked"
    env = {"SSH_ASKPASS": str(script), **extra}
    monkeypatch.setenv("ASKPASS_LOG", str(log))
    monkeypatch.setenv("ASKPASS_ANSWER", "pw 1")
    monkeypatch.setenv("ASKPASS_EXIT", extra.get("ASKPASS_EXIT", "0"))
    assert run_async(make_prompter(env)("Enter passphrase for key 'k': ")) == result
    assert log.read_text() == "Enter passphrase for key 'k': \n"


def test_missing_askpass_program(tmp_path, capsys):
    env = {"SSH_ASKPASS": str(tmp_path / "nope"), "SSH_ASKPASS_REQUIRE": "force"}
    assert run_async(make_prompter(env)("p: ")) is None
    assert "cannot run" in capsys.readouterr().err
