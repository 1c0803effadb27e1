"""OpenID Connect login end to end: the real `ssh3` and `ssh3-server` against a real
OpenID provider (tests/oidc_provider.py, authlib's authorization server over TLS on
127.0.0.1), on both QUIC backends.

The code flow runs without a browser: $BROWSER is tests/fake_browser.py, which GETs
the authorization URL and follows the provider's redirect to the client's listener.
The device flow is approved by posting the printed user_code to the provider.
Refusals use the provider's knobs (claims of the next ID tokens) or tokens it mints.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from e2e_helpers import (
    BACKENDS,
    Client,
    Server,
    find_program,
    library_params,
    logs_in,
    make_key,
    run_async,
    wait_for,
)
from oidc_provider import Provider, TestCA

FAKE_BROWSER = Path(__file__).with_name("fake_browser.py")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("oidc-ca"))


@pytest.fixture(scope="module")
def op(ca: TestCA) -> Any:
    """The trusted provider: listed in the server's identity file."""
    with Provider(ca, name="op") as provider:
        yield provider


@pytest.fixture(scope="module")
def rogue(ca: TestCA) -> Any:
    """A provider the client knows but the server does not trust."""
    with Provider(ca, name="rogue", client_id="ssh3-test") as provider:
        yield provider


@pytest.fixture(scope="module", params=BACKENDS)
def oidc_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                ca: TestCA, op: Provider) -> Any:
    workdir = tmp_path_factory.mktemp(f"oidc-server-{request.param}")
    identities = workdir / "authorized_identities"
    identities.write_text(f"oidc {op.client_id} {op.issuer} {op.user.email}\n")
    # -per-source-penalties no: the refusal tests would otherwise lock 127.0.0.1 out
    server = Server(workdir, request.param, identities,
                    extra_args=["-oidc-ca-file", str(ca.cert_path),
                                "-per-source-penalties", "no"])
    with server.running():
        yield server


@pytest.fixture
def oidc_client(tmp_path: Path, oidc_server: Server, ca: TestCA, op: Provider,
                rogue: Provider) -> Any:
    home = tmp_path / "home"
    client = Client(home, make_key(tmp_path / "unused-key"), oidc_server.backend)
    client.trust(oidc_server)
    config = home / ".ssh3" / "oidc_config.json"  # the default place
    config.write_text(json.dumps([
        {"issuer_url": p.issuer, "client_id": p.client_id, "client_secret": p.client_secret}
        for p in (op, rogue)]))
    op.overrides.clear()
    rogue.overrides.clear()
    return client


def oidc_argv(server: Server, issuer: str, command: str, *extra: str) -> list[str]:
    return [find_program("ssh3"), "-quic-backend", server.backend, "-use-oidc", issuer,
            *extra, server.target(), command]


def oidc_env(client: Client, ca: TestCA, browser: bool = True) -> dict[str, str]:
    env = client.env(SSL_CERT_FILE=str(ca.cert_path))
    for name in ("SSH_AUTH_SOCK", "DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        env.pop(name, None)
    if browser:
        env["BROWSER"] = f"{sys.executable} {FAKE_BROWSER} %s"
    return env


def run_code_flow(client: Client, server: Server, ca: TestCA, issuer: str, command: str,
                  *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(oidc_argv(server, issuer, command, *extra), env=oidc_env(client, ca),
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                          start_new_session=True)


def auth_lines(server: Server, since: int) -> list[str]:
    return [line for line in server.log().splitlines()[since:] if "ssh3.auth: auth " in line]


def log_mark(server: Server) -> int:
    return len(server.log().splitlines())


# ---------------------------------------------------------------- logins


def test_code_flow_with_pkce_runs_a_command(oidc_client, oidc_server, ca, op):
    mark = log_mark(oidc_server)
    r = run_code_flow(oidc_client, oidc_server, ca, op.issuer, "echo oidc-ok")
    assert (r.returncode, r.stdout) == (0, b"oidc-ok\n"), r.stderr
    # the URL is printed even though a browser was opened
    assert re.search(rb"https://127\.0\.0\.1:\d+/op/authorize\?", r.stderr), r.stderr
    asked = op.authorize_requests[-1]
    assert asked["code_challenge_method"] == "S256" and asked["code_challenge"]
    assert asked["scope"] == "openid email"
    assert asked["state"] != "state" and len(asked["state"]) >= 20  # random, not constant
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/ssh", asked["redirect_uri"])
    assert op.token_requests[-1] == {"grant_type": "authorization_code",
                                     "auth": "client_secret_basic", "code_verifier": "yes"}
    lines = auth_lines(oidc_server, mark)
    assert len(lines) == 1 and "auth accepted" in lines[0], lines
    assert f"method=oidc key={op.issuer}:{op.user.email}" in lines[0]


def test_code_flow_without_pkce(oidc_client, oidc_server, ca, op):
    r = run_code_flow(oidc_client, oidc_server, ca, op.issuer, "echo no-pkce", "-no-pkce")
    assert (r.returncode, r.stdout) == (0, b"no-pkce\n"), r.stderr
    assert "code_challenge" not in op.authorize_requests[-1]
    assert op.token_requests[-1]["code_verifier"] == "no"
    # v0.1.7's -do-pkce is accepted (PKCE is the default anyway)
    r = run_code_flow(oidc_client, oidc_server, ca, op.issuer, "echo do-pkce", "-do-pkce")
    assert (r.returncode, r.stdout) == (0, b"do-pkce\n"), r.stderr
    assert op.authorize_requests[-1]["code_challenge_method"] == "S256"


def test_device_flow_login(oidc_client, oidc_server, ca, op):
    """No browser here: the client picks the device flow, prints the code, polls."""
    proc = subprocess.Popen(oidc_argv(oidc_server, op.issuer, "echo device-ok"),
                            env=oidc_env(oidc_client, ca, browser=False),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stderr is not None
        line = b""
        deadline = time.monotonic() + 30
        while b"enter the code" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the client ended without printing a user code"
        match = re.search(rb"visit (\S+) and enter the code: (\S+)", line)
        assert match, line
        assert match.group(1).decode() == op.issuer + "/device"
        resp = httpx2.post(op.issuer + "/device/approve",
                           data={"user_code": match.group(2).decode()},
                           verify=ca.context(), timeout=10)
        assert resp.json() == {"approved": True}
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert (proc.returncode, out) == (0, b"device-ok\n"), err
    assert op.token_requests[-1]["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code"


def test_device_flow_denied(oidc_client, oidc_server, ca, op):
    proc = subprocess.Popen(oidc_argv(oidc_server, op.issuer, "echo must-not-run",
                                      "-oidc-device"),
                            env=oidc_env(oidc_client, ca),  # a browser, but -oidc-device
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and b"enter the code" not in line:
            line = proc.stderr.readline()
        code = re.search(rb"enter the code: (\S+)", line)
        assert code, line
        httpx2.post(op.issuer + "/device/approve",
                    data={"user_code": code.group(1).decode(), "deny": "1"},
                    verify=ca.context(), timeout=10)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 255 and out == b""
    assert b"access_denied" in err, err


# ---------------------------------------------------------------- refusals (real client)


@pytest.mark.parametrize("case", ["other-audience", "expired", "untrusted-issuer"])
def test_bad_tokens_from_the_code_flow_are_refused(case, oidc_client, oidc_server, ca, op,
                                                   rogue):
    issuer = op.issuer
    if case == "other-audience":
        op.overrides["aud"] = ["some-other-client"]
        reason = "audience ['some-other-client'] does not contain"
    elif case == "expired":
        now = int(time.time())
        op.overrides.update(iat=now - 120, exp=now - 60)
        reason = "token expired"
    else:
        issuer = rogue.issuer  # a real login, at a provider the server does not list
        reason = "is not a trusted issuer"
    mark = log_mark(oidc_server)
    r = run_code_flow(oidc_client, oidc_server, ca, issuer, "echo must-not-run")
    assert r.returncode == 255 and r.stdout == b"", r.stderr
    assert re.search(rb"401|authentication", r.stderr, re.I), r.stderr
    lines = auth_lines(oidc_server, mark)
    assert len(lines) == 1 and "auth refused" in lines[0] and "method=oidc" in lines[0], lines
    assert reason in lines[0], lines[0]
    assert oidc_server.alive()


# ---------------------------------------------------------------- refusals (library)


async def _login_with(server: Server, backend: str, key: Path, token: str) -> bool:
    from ssh3.aio.client import Identity

    params = library_params(server, key, backend)
    params.identities = [Identity("oidc", lambda user, conv: "Bearer " + token)]
    return await logs_in(params)


def _try_tokens(server: Server, key: Path, tokens: list[str]) -> list[bool]:
    async def all_of() -> list[bool]:
        return [await _login_with(server, server.backend, key, t) for t in tokens]

    return run_async(all_of())  # type: ignore[return-value]


def test_claim_refusals(oidc_client, oidc_server, op, rogue):
    cases = {
        "email_verified false": (op.mint(email_verified=False), "email not verified"),
        "email_verified string": (op.mint(email_verified="true"), "email not verified"),
        "email_verified absent": (op.mint(email_verified=None), "email not verified"),
        "other email": (op.mint(email="mallory@example.test"), "email 'mallory@"),
        "email case": (op.mint(email=op.user.email.upper()), "email 'ALICE@"),
        # signed by another provider's key but claiming the trusted issuer
        "forged issuer": (rogue.mint(iss=op.issuer), "no key with kid"),
        "good": (op.mint(), ""),
    }
    mark = log_mark(oidc_server)
    results = _try_tokens(oidc_server, oidc_client.key, [t for t, _ in cases.values()])
    assert results == [False] * (len(cases) - 1) + [True]
    lines = auth_lines(oidc_server, mark)
    assert len(lines) == len(cases), lines
    for (name, (_, reason)), line in zip(cases.items(), lines, strict=True):
        assert "method=oidc" in line, (name, line)
        assert reason in line, (name, line)
    assert oidc_server.alive()


def test_key_rotation_refetches_the_jwks_once(oidc_client, oidc_server, op):
    # the server has the provider's keys cached (a login), then the provider rotates
    assert _try_tokens(oidc_server, oidc_client.key, [op.mint()]) == [True]
    fetches = op.jwks_fetches
    op.rotate_key()
    mark = log_mark(oidc_server)
    results = _try_tokens(oidc_server, oidc_client.key, [op.mint(), op.mint()])
    assert results == [True, True]
    assert op.jwks_fetches == fetches + 1  # one refetch for the new kid, then cached
    assert wait_for(lambda: "JWKS refetched for kid" in "\n".join(
        oidc_server.log().splitlines()[mark:]), 5)


def test_oidc_identity_is_for_bearer_id_tokens_only(oidc_client, oidc_server, op):
    """An oidc line admits nobody with a key: a key JWT still goes to the public-key
    verifier (which finds no key), not to the OIDC one."""
    mark = log_mark(oidc_server)
    r = oidc_client.run(oidc_server, "echo must-not-run")
    assert r.returncode == 255, r.stderr
    lines = auth_lines(oidc_server, mark)
    assert lines and all("auth refused" in line and "method=publickey" in line
                         for line in lines), lines


def test_unknown_issuer_in_client_config(oidc_client, oidc_server, ca):
    r = run_code_flow(oidc_client, oidc_server, ca, "https://127.0.0.1:1/nowhere", "true")
    assert r.returncode == 255
    assert b"no entry for issuer https://127.0.0.1:1/nowhere" in r.stderr, r.stderr
    assert b"no usable identity" in r.stderr and b"skipped: oidc https://127.0.0.1:1" \
        in r.stderr, r.stderr



def test_server_refuses_an_unusable_ca_file(tmp_path):
    bad = tmp_path / "bad-ca.pem"
    bad.write_text("not a certificate\n")
    for ca_file in (bad, tmp_path / "missing.pem"):
        r = subprocess.run([find_program("ssh3-server"), "-bind", "127.0.0.1:0",
                            "-generate-selfsigned-cert", "-cert", str(tmp_path / "c.pem"),
                            "-key", str(tmp_path / "k.pem"), "-oidc-ca-file", str(ca_file)],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        assert r.returncode == 2, r.stderr
        assert f"-oidc-ca-file {ca_file}".encode() in r.stderr
        (tmp_path / "c.pem").unlink()
        (tmp_path / "k.pem").unlink()
