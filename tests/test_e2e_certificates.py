"""OpenSSH user certificates end to end (docs/certificates.md): CAs and certificates
made by `ssh-keygen -s`, a real ssh3-server with -trusted-user-ca-keys or a
cert-authority line, and the real client sending KEY-cert.pub (or the agent's
certificate) in its JWT header.

The test key's plain public key is in no authorized_keys file: only the
certificate can log in (except where the fallback to the plain key is tested).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_helpers import BACKENDS, USER, Client, Server, make_key, wait_for
from ssh_agent_helpers import HAVE_AGENT, running_agent

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                                reason="needs OpenSSH's ssh-keygen")

NO_PENALTIES = ["-per-source-penalties", "no"]


def keygen(*args: str) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True, timeout=30,
                   stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trusted CA (Ed25519), a second one (RSA, for cert-authority lines) and one
    nobody trusts."""
    directory = tmp_path_factory.mktemp("cas")
    out = {}
    for name, kind in (("trusted", "ed25519"), ("line", "rsa"), ("stranger", "ed25519")):
        out[name] = directory / f"ca_{name}"
        keygen("-t", kind, "-N", "", "-C", f"ca-{name}", "-f", str(out[name]))
    return out


@pytest.fixture(scope="module", params=BACKENDS)
def ca_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              cas: dict[str, Path]) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp(f"certs-{request.param}")
    trusted = workdir / "trusted_ca_keys"
    trusted.write_text("# the test CA\n" + Path(f"{cas['trusted']}.pub").read_text())
    authorized = workdir / "authorized_keys"
    authorized.write_text("")
    server = Server(workdir / "server", request.param, authorized,
                    extra_args=[*NO_PENALTIES, "-trusted-user-ca-keys", str(trusted)])
    with server.running():
        yield server


@pytest.fixture
def certified(tmp_path: Path, cas: dict[str, Path]) -> Callable[..., Path]:
    """certified(*ssh-keygen -s options, ca='trusted'): a fresh key with KEY-cert.pub
    beside it; returns the private key path."""
    count = 0

    def make(*options: str, ca: str = "trusted", principals: str = USER) -> Path:
        nonlocal count
        count += 1
        key = make_key(tmp_path / f"certkey{count}")
        keygen("-s", str(cas[ca]), "-I", f"test-id-{count}", "-n", principals, *options,
               f"{key}.pub")
        assert Path(f"{key}-cert.pub").exists()
        return key

    return make


@pytest.fixture(autouse=True)
def empty_authorized_keys(ca_server: Server) -> None:
    ca_server.authorized_keys.write_text("")


def log_has(server: Server, pattern: str) -> bool:
    return wait_for(lambda: re.search(pattern, server.log()) is not None, 5.0)


def login(client: Client, server: Server, key: Path, command: str = "echo in",
          extra_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return client.run(server, command, key=key, extra_args=extra_args)


def refused(client: Client, server: Server, key: Path, reason: str) -> None:
    r = login(client, server, key, "echo must-not-run")
    assert (r.returncode, r.stdout) == (255, b""), r.stderr
    assert log_has(server, rf"auth refused .* key=SHA256:\S+ reason=certificate refused: "
                           rf"{reason}"), \
        server.log()[-2000:]


def test_valid_certificate_from_trusted_ca_file(ca_server, make_client, certified):
    client = make_client(ca_server.backend, trust=ca_server)
    key = certified("-V", "-5m:+1h")
    r = login(client, ca_server, key)
    assert (r.returncode, r.stdout) == (0, b"in\n"), r.stderr
    assert log_has(ca_server, r"auth accepted .*method=publickey key=SHA256:\S+ "
                              r"cert id='test-id-1' serial=0 ca=SHA256:\S+ \(trusted CA file\)")
    # the same key without its certificate is not authorized
    Path(f"{key}-cert.pub").unlink()
    r = login(client, ca_server, key)
    assert r.returncode == 255


def test_expired_certificate(ca_server, make_client, certified):
    client = make_client(ca_server.backend, trust=ca_server)
    refused(client, ca_server, certified("-V", "20200101:20200102"), "certificate expired")


def test_not_yet_valid_certificate(ca_server, make_client, certified):
    client = make_client(ca_server.backend, trust=ca_server)
    refused(client, ca_server, certified("-V", "+1d:+2d"), "certificate not yet valid")


def test_wrong_principal(ca_server, make_client, certified):
    client = make_client(ca_server.backend, trust=ca_server)
    refused(client, ca_server, certified(principals="someone-else,nobody"),
            f"certificate principals do not include '{USER}'")


def test_untrusted_ca(ca_server, make_client, certified):
    client = make_client(ca_server.backend, trust=ca_server)
    refused(client, ca_server, certified(ca="stranger"), r"CA SHA256:\S+ is not trusted")


def test_force_command(ca_server, make_client, certified):
    client = make_client(ca_server.backend, trust=ca_server)
    key = certified("-O", "force-command=echo forced-by-cert; echo "
                          "orig=${SSH_ORIGINAL_COMMAND-unset}")
    r = login(client, ca_server, key, "echo what I asked")
    assert (r.returncode, r.stdout) == (0, b"forced-by-cert\norig=echo what I asked\n"), \
        r.stderr


def test_source_address(ca_server, make_client, certified):
    client = make_client(ca_server.backend, trust=ca_server)
    refused(client, ca_server, certified("-O", "source-address=10.0.0.0/8,192.168.0.0/16"),
            "source-address does not allow this client")
    r = login(client, ca_server, certified("-O", "source-address=10.0.0.0/8,127.0.0.1/32"))
    assert (r.returncode, r.stdout) == (0, b"in\n"), r.stderr


def test_no_permit_pty(ca_server, make_client, certified):
    client = make_client(ca_server.backend, trust=ca_server)
    r = login(client, ca_server, certified("-O", "no-pty"), "tty; echo after",
              extra_args=("-t",))
    assert (r.returncode, r.stdout) == (0, b"not a tty\nafter\n"), r.stderr
    assert b"PTY allocation request failed" in r.stderr
    # the default extensions include permit-pty
    r = login(client, ca_server, certified(), "tty", extra_args=("-t",))
    assert r.returncode == 0 and r.stdout.startswith(b"/dev/pts/"), (r.stdout, r.stderr)


def test_no_extensions_means_no_forwarding(ca_server, make_client, certified):
    client = make_client(ca_server.backend, trust=ca_server)
    # -O clear: no extension at all, so no pty and no port forwarding (as sshd)
    r = login(client, ca_server, certified("-O", "clear"), "echo x", extra_args=(
        "-W", "127.0.0.1:9"))
    assert r.returncode == 255  # -W with a command is a usage error: check the forward
    r = client.run(ca_server, None, key=certified("-O", "clear"),
                   extra_args=["-W", "127.0.0.1:9"], timeout=30)
    assert r.returncode == 255 and b"administratively prohibited" in r.stderr, r.stderr
    assert log_has(ca_server, "port forwarding is not permitted for this key")


def test_cert_authority_line_with_principals(ca_server, make_client, certified, cas):
    client = make_client(ca_server.backend, trust=ca_server)
    ca_line = Path(f"{cas['line']}.pub").read_text().strip()
    deploy = certified(ca="line", principals="deploy")
    # the line's principals= replaces the user name
    ca_server.authorized_keys.write_text(f'cert-authority,principals="ops,deploy" {ca_line}\n')
    r = login(client, ca_server, deploy)
    assert (r.returncode, r.stdout) == (0, b"in\n"), r.stderr
    assert log_has(ca_server, r"cert id='test-id-1' serial=0 ca=SHA256:\S+ "
                              r"line=.*authorized_keys:1")
    ca_server.authorized_keys.write_text(f'cert-authority,principals="ops" {ca_line}\n')
    refused(client, ca_server, deploy, "certificate principals not allowed by principals=")
    # without principals= the certificate must name the user
    ca_server.authorized_keys.write_text(f"cert-authority {ca_line}\n")
    refused(client, ca_server, deploy, f"certificate principals do not include '{USER}'")
    r = login(client, ca_server, certified(ca="line"))
    assert (r.returncode, r.stdout) == (0, b"in\n"), r.stderr
    # the line's options narrow the certificate's login
    ca_server.authorized_keys.write_text(f'cert-authority,command="echo from-line" {ca_line}\n')
    r = login(client, ca_server, certified(ca="line"))
    assert (r.returncode, r.stdout) == (0, b"from-line\n"), r.stderr
    ca_server.authorized_keys.write_text(f'cert-authority,from="10.0.0.0/8" {ca_line}\n')
    refused(client, ca_server, certified(ca="line"), "client address not allowed by from=")
    # a CA line is not a plain key: the CA's own key cannot log in
    r = login(client, ca_server, cas["line"])
    assert r.returncode == 255


def test_refused_certificate_falls_back_to_the_plain_key(ca_server, make_client, certified):
    client = make_client(ca_server.backend, trust=ca_server)
    key = certified("-V", "20200101:20200102")
    ca_server.authorized_keys.write_text(Path(f"{key}.pub").read_text())
    r = login(client, ca_server, key)
    assert (r.returncode, r.stdout) == (0, b"in\n"), r.stderr


@pytest.mark.skipif(not HAVE_AGENT, reason="needs OpenSSH's ssh-agent and ssh-add")
def test_certificate_from_the_agent(ca_server, make_client, certified, tmp_path):
    client = make_client(ca_server.backend, trust=ca_server)
    key = certified()
    with running_agent(key) as sock:  # ssh-add adds KEY-cert.pub too
        # no usable -i file: only the agent (its key and its certificate) can log in
        r = subprocess.run(client.argv(ca_server, "echo via-agent",
                                       key=tmp_path / "no-such-key"),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                           env=client.env(SSH_AUTH_SOCK=sock), start_new_session=True)
    assert (r.returncode, r.stdout) == (0, b"via-agent\n"), r.stderr
    assert log_has(ca_server, r"auth accepted .*cert id='test-id-1'")


def test_certificate_of_another_key_is_not_sent(ca_server, make_client, certified):
    client = make_client(ca_server.backend, trust=ca_server)
    key, other = certified(), certified()
    # key-cert.pub now certifies `other`: the client says so and offers the plain key
    shutil.copy(f"{other}-cert.pub", f"{key}-cert.pub")
    ca_server.authorized_keys.write_text(Path(f"{key}.pub").read_text())
    r = login(client, ca_server, key)
    assert (r.returncode, r.stdout) == (0, b"in\n"), r.stderr
    assert b"-cert.pub certifies another key; not sent" in r.stderr
    assert log_has(ca_server, r"auth accepted .* line=.*authorized_keys:1")
