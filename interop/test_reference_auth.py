"""Login methods between our implementation and the reference Go ssh3, both ways:
an ssh-agent key, a password, and a passphrase-protected key file.

Written from PROTOCOL.md: §2.4.1 (password: HTTP Basic, off unless the server runs
with ``-enable-password-login``, §7.2), §2.4.2 (the JWT, signed by the agent for
agent keys: RS256/EdDSA only), §7.1/§7.4 (the Go client: ``-use-password`` prompts
``password for <url>:`` on the terminal; ``-privkey`` of an encrypted file prompts
for the passphrase; ``-pubkey-for-agent F`` picks the agent key matching F).

Each test runs in the four directions of the other interop tests: our client (aioquic,
qh3) -> the reference server, and the reference client -> our server (aioquic, qh3).
The servers here are started with ``-enable-password-login``. Our client answers
prompts through ``SSH_ASKPASS`` (``SSH_ASKPASS_REQUIRE=force``); the Go client runs on
a pty and the test types the answer.

Password logins need an account whose password we know: as root the dedicated
``ssh3interop`` account gets a random password for the session (its previous hash is
put back at the end); otherwise those tests are skipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from interop_harness import (
    CLIENT_TIMEOUT,
    HOST,
    OUR_BACKENDS,
    LoginUser,
    PtyProcess,
    ServerProcess,
    client_env,
    our_client_argv,
    start_our_server,
    start_reference_server,
    stop_pid,
)

DIRECTIONS = [("ours", b) for b in OUR_BACKENDS] + [("ref", b) for b in OUR_BACKENDS]
PASSPHRASE = "interop passphrase"
MARKER = "LOGIN-OK"


def _direction_id(param: tuple[str, str]) -> str:
    client, backend = param
    return f"ours-{backend}-to-ref" if client == "ours" else f"ref-to-ours-{backend}"


# ---------------------------------------------------------------- keys and accounts


@dataclass
class AuthKeys:
    encrypted: Path  # passphrase PASSPHRASE
    agent: Path  # unencrypted, loaded into an agent; never given as a file
    certified: Path  # unencrypted, with certified-cert.pub beside it (docs/certificates.md)


def _keygen(path: Path, passphrase: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C",
                    f"ssh3-interop-{path.name}", "-f", str(path)], check=True, timeout=30,
                   capture_output=True, stdin=subprocess.DEVNULL)


def _chown_tree(path: Path, user: LoginUser) -> None:
    if os.geteuid() == 0:
        for entry in (path, *path.rglob("*")):
            os.chown(entry, user.uid, user.gid)


@pytest.fixture(scope="module")
def auth_keys(ref_bin_dir: Path, workspace: Path, login_user: LoginUser) -> Iterator[AuthKeys]:
    """Two keys, authorized for the login user for the module (and removed after)."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs OpenSSH's ssh-keygen")
    directory = workspace / "auth-keys"
    directory.mkdir()
    keys = AuthKeys(directory / "id_encrypted", directory / "id_agent",
                    directory / "id_certified")
    _keygen(keys.encrypted, PASSPHRASE)
    _keygen(keys.agent, "")
    _keygen(keys.certified, "")
    _keygen(directory / "ca", "")
    subprocess.run(["ssh-keygen", "-q", "-s", str(directory / "ca"), "-I", "interop",
                    "-n", login_user.name, f"{keys.certified}.pub"], check=True, timeout=30,
                   capture_output=True, stdin=subprocess.DEVNULL)
    _chown_tree(directory, login_user)
    lines = [Path(f"{k}.pub").read_bytes().strip()
             for k in (keys.encrypted, keys.agent, keys.certified)]
    if login_user.authorized_keys_file is not None:
        target = login_user.authorized_keys_file
    else:
        target = Path(login_user.home) / ".ssh" / "authorized_keys"
        if not target.parent.is_dir():
            target.parent.mkdir(mode=0o700)
            if os.geteuid() == 0:
                os.chown(target.parent, login_user.uid, login_user.gid)
    before = target.read_bytes() if target.exists() else None
    text = (before or b"")
    if text and not text.endswith(b"\n"):
        text += b"\n"
    target.write_bytes(text + b"\n".join(lines) + b"\n")
    target.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(target, login_user.uid, login_user.gid)
    try:
        yield keys
    finally:
        with contextlib.suppress(FileNotFoundError):
            kept = b"".join(line for line in target.read_bytes().splitlines(keepends=True)
                            if line.strip() not in lines)
            if before is None and not kept.strip():
                target.unlink()
            else:
                target.write_bytes(kept)


@pytest.fixture(scope="module")
def password(login_user: LoginUser) -> Iterator[str]:
    """A fresh random password for the dedicated account (root only)."""
    if os.geteuid() != 0:
        pytest.skip("password logins need an account whose password the test sets: "
                    "run as root (the dedicated ssh3interop account)")
    chpasswd = shutil.which("chpasswd") or "/usr/sbin/chpasswd"
    usermod = shutil.which("usermod") or "/usr/sbin/usermod"
    old = subprocess.run(["getent", "shadow", login_user.name], capture_output=True,
                         text=True, timeout=30).stdout.split(":")
    old_hash = old[1] if len(old) > 1 else "!"
    value = "Pw-" + secrets.token_urlsafe(12)
    subprocess.run([chpasswd], input=f"{login_user.name}:{value}\n", text=True, check=True,
                   timeout=30, capture_output=True)
    try:
        yield value
    finally:
        subprocess.run([usermod, "-p", old_hash, login_user.name], check=False, timeout=30,
                       capture_output=True)


# ---------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def password_servers(ref_bin_dir: Path, login_user: LoginUser, auth_keys: AuthKeys,
                     tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[Callable[[str], ServerProcess]]:
    """``get("ref")`` or ``get(backend)``: a server with -enable-password-login,
    started once for the module."""
    started: dict[str, ServerProcess] = {}

    def get(which: str) -> ServerProcess:
        if which not in started:
            workdir = tmp_path_factory.mktemp(f"auth-server-{which}")
            if which == "ref":
                if os.geteuid() != 0:
                    pytest.skip("reference server must run as root (PROTOCOL.md §2.5)")
                started[which] = start_reference_server(
                    ref_bin_dir, workdir, extra_args=("-enable-password-login",))
            else:
                started[which] = start_our_server(
                    which, workdir, authorized_keys_file=login_user.authorized_keys_file,
                    extra_args=("-enable-password-login",))
        return started[which]

    try:
        yield get
    finally:
        for server in started.values():
            server.stop()


@dataclass
class Direction:
    client: str  # "ours" or "ref"
    backend: str
    server: ServerProcess
    user: LoginUser
    ref_client: Path
    home: Path
    run_as: tuple[int, int] | None  # the reference client's identity (root runs)

    def target(self) -> str:
        return f"{self.user.name}@{HOST}:{self.server.port}{self.server.url_path}"


@pytest.fixture(params=DIRECTIONS, ids=_direction_id)
def direction(request: pytest.FixtureRequest, password_servers: Callable[[str], ServerProcess],
              login_user: LoginUser, ref_client_bin: Path, tmp_path: Path) -> Direction:
    client, backend = request.param
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"QUIC backend {backend} is not installed")
    server = password_servers("ref" if client == "ours" else backend)
    home = tmp_path / f"home-{client}"
    home.mkdir(mode=0o700)
    run_as = (login_user.uid, login_user.gid) if client == "ref" and os.geteuid() == 0 \
        else None
    if run_as is not None:
        os.chown(home, *run_as)
    return Direction(client, backend, server, login_user, ref_client_bin, home, run_as)


# ---------------------------------------------------------------- clients


def _identity(run_as: tuple[int, int] | None) -> dict[str, object]:
    return {} if run_as is None else {"user": run_as[0], "group": run_as[1],
                                      "extra_groups": []}


def run_ours(d: Direction, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Our client, no terminal; prompts go to SSH_ASKPASS."""
    argv = [*our_client_argv(d.backend), "-insecure", *args, d.target(), f"echo {MARKER}"]
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              env={**client_env(d.home), **env}, cwd=d.home,
                              timeout=CLIENT_TIMEOUT, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"our client timed out: {argv}\n{exc.stderr!r}") from None


def askpass(d: Direction, answer: str) -> dict[str, str]:
    script = d.home / "askpass.sh"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{answer}'\n")
    script.chmod(0o700)
    return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force"}


def run_ref_on_pty(d: Direction, args: list[str], env: dict[str, str], prompt: bytes,
                   answer: str) -> tuple[int, str]:
    """The Go client on a pty: wait for *prompt*, type *answer*, collect the output."""
    argv = [str(d.ref_client), "-insecure", *args, d.target(), f"echo {MARKER}"]
    proc = PtyProcess(argv, {**client_env(d.home, "vt100"), **env}, d.home, 24, 80,
                      d.run_as)
    try:
        proc.expect(prompt, timeout=CLIENT_TIMEOUT)
        proc.send(answer.encode() + b"\r")
        code = proc.wait(CLIENT_TIMEOUT)
        return code, proc.text()
    finally:
        proc.close()


@contextlib.contextmanager
def ssh_agent(key: Path, run_as: tuple[int, int] | None) -> Iterator[str]:
    """An ssh-agent holding *key*, running as the client's user (ssh-agent serves
    only its own uid and root); stopped by PID."""
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("needs OpenSSH's ssh-agent and ssh-add")
    directory = tempfile.mkdtemp(prefix="ssh3-ia-", dir="/tmp")
    if run_as is not None:
        os.chown(directory, *run_as)
    sock = os.path.join(directory, "a.sock")
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, **_identity(run_as))  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            assert proc.poll() is None and time.monotonic() < deadline, \
                "ssh-agent did not start"
            time.sleep(0.02)
        subprocess.run(["ssh-add", str(key)], env={"PATH": os.environ.get("PATH", ""),
                                                   "SSH_AUTH_SOCK": sock},
                       check=True, timeout=30, capture_output=True, stdin=subprocess.DEVNULL,
                       start_new_session=True, **_identity(run_as))  # type: ignore[arg-type]
        yield sock
    finally:
        stop_pid(proc)
        shutil.rmtree(directory, ignore_errors=True)


def _ok(d: Direction, code: int, output: str) -> None:
    assert code == 0 and MARKER in output, (
        f"{d.client} client -> {d.server.label}: exit {code}\n{output[-3000:]}\n"
        f"--- server log tail ---\n{d.server.log_tail()}")


# ---------------------------------------------------------------- tests


def test_password_login(direction: Direction, password: str) -> None:
    """§2.4.1: HTTP Basic; the server checks the system password."""
    d = direction
    if d.client == "ours":
        r = run_ours(d, ["-use-password"], askpass(d, password))
        _ok(d, r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace"))
    else:
        code, text = run_ref_on_pty(d, ["-use-password"], {}, rb"(?i)password", password)
        _ok(d, code, text)


def test_wrong_password_is_refused(direction: Direction, password: str) -> None:
    d = direction
    if d.client == "ours":
        r = run_ours(d, ["-use-password", "-o", "NumberOfPasswordPrompts=1"],
                     askpass(d, password + "-wrong"))
        assert r.returncode == 255 and MARKER.encode() not in r.stdout, r.stderr
    else:
        code, text = run_ref_on_pty(d, ["-use-password"], {}, rb"(?i)password",
                                    password + "-wrong")
        assert code != 0 and f"{MARKER}\r\n" not in text, text


def test_encrypted_key_login(direction: Direction, auth_keys: AuthKeys) -> None:
    """A passphrase-protected OpenSSH key: the client asks for the passphrase, then
    signs the §2.4.2 JWT as with any key file."""
    d = direction
    if d.client == "ours":
        r = run_ours(d, ["-i", str(auth_keys.encrypted)], askpass(d, PASSPHRASE))
        _ok(d, r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace"))
    else:
        code, text = run_ref_on_pty(d, ["-privkey", str(auth_keys.encrypted)], {},
                                    rb"(?i)passphrase", PASSPHRASE)
        _ok(d, code, text)


def test_agent_login(direction: Direction, auth_keys: AuthKeys) -> None:
    """§2.4.2 through an ssh-agent: the agent signs (EdDSA), the key file is never
    given to the client."""
    d = direction
    with ssh_agent(auth_keys.agent, d.run_as) as sock:
        if d.client == "ours":
            # our client tries the agent's keys first (OpenSSH's order); no -i at all
            r = run_ours(d, [], {"SSH_AUTH_SOCK": sock})
            _ok(d, r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace"))
        else:
            # the Go client uses an agent key only when named with -pubkey-for-agent
            argv = [str(d.ref_client), "-insecure", "-pubkey-for-agent",
                    f"{auth_keys.agent}.pub", d.target(), f"echo {MARKER}"]
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  env={**client_env(d.home), "SSH_AUTH_SOCK": sock},
                                  cwd=d.home, timeout=CLIENT_TIMEOUT, start_new_session=True,
                                  **_identity(d.run_as))  # type: ignore[arg-type]
            _ok(d, proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace"))


@pytest.mark.parametrize("backend", OUR_BACKENDS)
def test_certificate_header_is_ignored_by_the_reference(
        backend: str, password_servers: Callable[[str], ServerProcess], auth_keys: AuthKeys,
        login_user: LoginUser, ref_client_bin: Path, tmp_path: Path) -> None:
    """Our client sends KEY-cert.pub in the JWT header (``ssh3-cert``,
    docs/certificates.md); the reference server, which does not know certificates,
    must verify the same token with the plain key of authorized_keys."""
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"QUIC backend {backend} is not installed")
    assert Path(f"{auth_keys.certified}-cert.pub").exists()
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    d = Direction("ours", backend, password_servers("ref"), login_user, ref_client_bin, home,
                  None)
    r = run_ours(d, ["-i", str(auth_keys.certified)], {})
    _ok(d, r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace"))
