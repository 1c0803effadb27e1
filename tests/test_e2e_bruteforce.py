"""A password brute force from one source: 50 wrong passwords from 127.0.0.1 get
that source penalised (then even the right password is refused without a PAM
check), while other sources (::1 on the same dual-stack server, and 127.0.0.2
through the client's -b) still log in.

Needs root, like test_e2e_accounts.py: the password is checked by PAM against a
real account."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import Server, find_program, logs_in, make_key, run_async
from test_e2e_accounts import ACCOUNT, PASSWORD, account  # noqa: F401  (fixture)

from ssh3.aio.client import (
    ConnectParams,
    Identity,
)
from ssh3.auth.password import basic_authorization

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="PAM passwords need root")

ATTEMPTS = 50
PARALLEL = 10  # connections at a time: PAM delays each failure by ~2 s


@pytest.fixture(params=["aioquic", "qh3"])
def server(request: pytest.FixtureRequest, tmp_path: Path,
           account: pwd.struct_passwd) -> Iterator[Server]:  # noqa: F811
    key = make_key(tmp_path / "keys")
    # [::] takes both 127.0.0.1 (as ::ffff:127.0.0.1) and ::1: two sources, one server
    srv = Server(tmp_path / "srv", request.param, key.with_name(key.name + ".pub"),
                 extra_args=["-bind", "[::]:0", "-enable-password-login"])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


async def _attempt(srv: Server, host: str, password: str) -> bool:
    """One connection, one Basic credential; True if it was accepted."""
    ident = Identity("password", lambda u, _cid: basic_authorization(u, password))
    params = ConnectParams(host=host, port=srv.port, path=srv.url_path, user=ACCOUNT,
                           identities=[ident], backend=srv.backend, insecure=True)
    return await logs_in(params)


async def _brute_force(srv: Server) -> list[bool]:
    gate = asyncio.Semaphore(PARALLEL)

    async def one(i: int) -> bool:
        async with gate:
            return await _attempt(srv, "127.0.0.1", f"guess-{i}")

    return await asyncio.gather(*(one(i) for i in range(ATTEMPTS)))


def _cli_password_login(srv: Server, host: str, tmp_path: Path,
                        *extra: str) -> subprocess.CompletedProcess:
    """The real client, password from SSH_ASKPASS (no terminal)."""
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho '{PASSWORD}'\n")
    askpass.chmod(0o700)
    env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
               HOME=str(tmp_path), SSH3_QUIC_BACKEND=srv.backend)
    target = f"{ACCOUNT}@{host if ':' not in host else f'[{host}]'}:{srv.port}{srv.url_path}"
    return subprocess.run([find_program("ssh3"), "-insecure", "-use-password", *extra,
                           "-o", "NumberOfPasswordPrompts=1", target, "id -un"],
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL, env=env,
                          start_new_session=True)


def test_fifty_wrong_passwords_penalise_only_their_source(server: Server,
                                                          tmp_path: Path) -> None:
    results = run_async(_brute_force(server), timeout=120)
    assert results == [False] * ATTEMPTS
    log = server.log()
    checked = log.count("reason=wrong password")
    skipped = log.count("source penalised")
    # every attempt was answered; once the source had 15 s of penalty (3 failures)
    # the rest were refused without PAM: only the first wave cost a check
    assert checked + skipped == ATTEMPTS, log[-3000:]
    assert checked <= PARALLEL + 3 and skipped >= ATTEMPTS - PARALLEL - 3, (checked, skipped)
    # the right password from the penalised source: refused, no credential checked
    r = _cli_password_login(server, "127.0.0.1", tmp_path)
    assert r.returncode == 255 and b"401" in r.stderr, r.stderr
    log = server.log()
    assert log.count("source penalised") == skipped + 1
    assert "auth accepted" not in log
    # other sources are not affected: ::1, and 127.0.0.2 (OpenSSH's -b bind_address)
    r = _cli_password_login(server, "::1", tmp_path)
    assert (r.returncode, r.stdout) == (0, f"{ACCOUNT}\n".encode()), r.stderr
    r = _cli_password_login(server, "127.0.0.1", tmp_path, "-b", "127.0.0.2")
    assert (r.returncode, r.stdout) == (0, f"{ACCOUNT}\n".encode()), r.stderr
    accepted = [line for line in server.log().splitlines() if "auth accepted" in line]
    assert len(accepted) == 2, accepted
    assert "from ::1" in accepted[0] or "from [::1]" in accepted[0], accepted
    assert "127.0.0.2" in accepted[1], accepted
