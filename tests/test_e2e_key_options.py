"""authorized_keys options end to end (docs/authorized-keys.md): a real ssh3-server
whose authorized_keys line for the test key carries options, and the real client.

The server reads authorized_keys at every login, so one server per backend serves the
module and each test rewrites the file first. Clients connect from 127.0.0.1.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_helpers import BACKENDS, HOST, USER, Client, Server, make_key, wait_for
from services import reply_service
from ssh_agent_helpers import HAVE_AGENT, running_agent

NO_PENALTIES = ["-per-source-penalties", "no"]


@pytest.fixture(scope="module", params=BACKENDS)
def opt_server(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp(f"keyopts-{request.param}")
    authorized = workdir / "authorized_keys"
    authorized.write_text("")
    # refusals are expected here: no penalty for the test's source
    server = Server(workdir / "server", request.param, authorized,
                    extra_args=[*NO_PENALTIES, "-subsystem", "upper=tr a-z A-Z"])
    with server.running():
        yield server


@pytest.fixture
def authorize(user_key: Path) -> Callable[..., None]:
    """authorize(server, 'options') writes the test key's line with those options."""
    public = user_key.with_name(user_key.name + ".pub").read_text().strip()

    def write(server: Server, options: str, before: str = "") -> None:
        server.authorized_keys.write_text(f"{before}{options} {public}\n".lstrip())

    return write


@pytest.fixture
def start_server_with(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(backend: str, *flags: str) -> Server:
        authorized = tmp_path / f"ak{len(started)}"
        authorized.write_text("")
        server = Server(tmp_path / f"srv{len(started)}", backend, authorized,
                        extra_args=[*NO_PENALTIES, *flags])
        started.append(server)
        return server.start()

    yield start
    for server in started:
        assert not server.stop()


def run_with_agent(client: Client, server: Server, command: str, sock: str,
                   extra_args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(client.argv(server, command, extra_args=extra_args),
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                          env=client.env(SSH_AUTH_SOCK=sock), start_new_session=True)


def log_has(server: Server, pattern: str) -> bool:
    return wait_for(lambda: re.search(pattern, server.log()) is not None, 5.0)


# ---------------------------------------------------------------- from= and expiry-time


def test_from_match_and_mismatch(opt_server, authorize, make_client):
    client = make_client(opt_server.backend, trust=opt_server)
    for pattern in ("127.0.0.1", "127.0.0.0/8", "127.0.0.*", "!10.0.0.0/8,127.*"):
        authorize(opt_server, f'from="{pattern}"')
        r = client.run(opt_server, "echo in")
        assert (r.returncode, r.stdout) == (0, b"in\n"), (pattern, r.stderr)
    for pattern in ("10.0.0.0/8", "!127.0.0.1,*", "192.168.*"):
        authorize(opt_server, f'from="{pattern}"')
        r = client.run(opt_server, "echo must-not-run")
        assert (r.returncode, r.stdout) == (255, b""), pattern
    assert log_has(opt_server, r"auth refused .* reason=client address not allowed by from= "
                               r"\(.*authorized_keys:1\)")
    # a second line with the same key and an allowing from= is used, as by sshd
    authorize(opt_server, 'from="127.0.0.1"', before=f'from="10.0.0.0/8" '
              f'{client.key.with_name(client.key.name + ".pub").read_text().strip()}\n')
    r = client.run(opt_server, "echo second-line")
    assert (r.returncode, r.stdout) == (0, b"second-line\n"), r.stderr


def test_expiry_time_past_and_future(opt_server, authorize, make_client):
    client = make_client(opt_server.backend, trust=opt_server)
    authorize(opt_server, 'expiry-time="20200101"')
    r = client.run(opt_server, "echo must-not-run")
    assert (r.returncode, r.stdout) == (255, b"")
    assert log_has(opt_server, r"reason=key expired \(expiry-time\)")
    authorize(opt_server, 'expiry-time="29991231235959Z"')
    r = client.run(opt_server, "echo still-valid")
    assert (r.returncode, r.stdout) == (0, b"still-valid\n"), r.stderr


def test_malformed_line_is_skipped_with_file_and_line(opt_server, authorize, make_client):
    client = make_client(opt_server.backend, trust=opt_server)
    authorize(opt_server, 'command=unquoted')
    r = client.run(opt_server, "echo must-not-run")
    assert r.returncode == 255
    assert log_has(opt_server, r"authorized_keys:1: command= value must be double-quoted")
    # the bad line does not spoil a good one after it
    authorize(opt_server, "no-pty", before="# a comment\nbogus-option,no-pty ssh-ed25519 AAAA\n")
    r = client.run(opt_server, "echo good-line")
    assert (r.returncode, r.stdout) == (0, b"good-line\n"), r.stderr
    assert log_has(opt_server, r"authorized_keys:2: ")


# ---------------------------------------------------------------- command=


def test_forced_command_and_original_command(opt_server, authorize, make_client):
    client = make_client(opt_server.backend, trust=opt_server)
    authorize(opt_server, 'command="echo forced; echo orig=${SSH_ORIGINAL_COMMAND-unset}"')
    r = client.run(opt_server, "echo asked for this")
    assert (r.returncode, r.stdout) == (0, b"forced\norig=echo asked for this\n"), r.stderr
    r = client.run(opt_server, None)  # a shell: no original command
    assert (r.returncode, r.stdout) == (0, b"forced\norig=unset\n"), r.stderr
    # a subsystem: its command line is the original command (as sshd)
    r = client.run(opt_server, "upper", extra_args=["-s"], input=b"abc\n")
    assert (r.returncode, r.stdout) == (0, b"forced\norig=tr a-z A-Z\n"), r.stderr
    authorize(opt_server, "")
    r = client.run(opt_server, "upper", extra_args=["-s"], input=b"abc\n")
    assert (r.returncode, r.stdout) == (0, b"ABC\n"), r.stderr
    assert log_has(opt_server, rf"session \d+ of {USER}: forced command replaces exec")


# ---------------------------------------------------------------- pty


def test_no_pty_refuses_the_pty_and_the_session_goes_on(opt_server, authorize, make_client):
    client = make_client(opt_server.backend, trust=opt_server)
    for options in ("no-pty", "restrict"):
        authorize(opt_server, options)
        r = client.run(opt_server, "tty; echo after", extra_args=["-t"])
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"not a tty\nafter\n", (options, r.stdout)
        assert b"PTY allocation request failed" in r.stderr, r.stderr
    assert log_has(opt_server, r"pty-req refused \(no-pty\)")


def test_pty_after_restrict(opt_server, authorize, make_client):
    client = make_client(opt_server.backend, trust=opt_server)
    authorize(opt_server, "restrict,pty")
    r = client.run(opt_server, "tty", extra_args=["-t"])
    assert r.returncode == 0, r.stderr
    assert re.match(rb"/dev/pts/\d+\r?\n", r.stdout), r.stdout
    assert b"PTY allocation request failed" not in r.stderr


# ---------------------------------------------------------------- environment=


def test_environment_needs_the_server_flag(opt_server, authorize, make_client,
                                           start_server_with, user_key):
    show = "echo foo=${FOO-unset}"
    client = make_client(opt_server.backend, trust=opt_server)
    authorize(opt_server, 'environment="FOO=from key"')
    r = client.run(opt_server, show)
    assert (r.returncode, r.stdout) == (0, b"foo=unset\n"), r.stderr

    server = start_server_with(opt_server.backend, "-permit-user-environment")
    public = user_key.with_name(user_key.name + ".pub").read_text().strip()
    server.authorized_keys.write_text(f'environment="FOO=from key" {public}\n')
    client = make_client(server.backend, trust=server)
    r = client.run(server, show)
    assert (r.returncode, r.stdout) == (0, b"foo=from key\n"), r.stderr


# ---------------------------------------------------------------- forwarding


def test_no_port_forwarding_and_restrict_refuse_forwards(opt_server, authorize, make_client):
    client = make_client(opt_server.backend, trust=opt_server)
    with reply_service(b"hello from the service\n") as port:
        authorize(opt_server, "")
        r = client.run(opt_server, None, extra_args=["-W", f"{HOST}:{port}"], timeout=30)
        assert (r.returncode, r.stdout) == (0, b"hello from the service\n"), r.stderr
        for options in ("no-port-forwarding", "restrict"):
            authorize(opt_server, options)
            r = client.run(opt_server, None, extra_args=["-W", f"{HOST}:{port}"], timeout=30)
            assert r.returncode == 255 and r.stdout == b"", options
            assert b"administratively prohibited" in r.stderr, r.stderr
    assert log_has(opt_server, rf"direct-tcp to {HOST}:{port} for {USER} from 127\.0\.0\.1 "
                               r"\d+ refused: port forwarding is not permitted for this key")


def test_permitopen(opt_server, authorize, make_client):
    client = make_client(opt_server.backend, trust=opt_server)
    with reply_service(b"allowed\n") as allowed, reply_service(b"other\n") as other:
        authorize(opt_server, f'permitopen="{HOST}:{allowed}",permitopen="localhost:1"')
        r = client.run(opt_server, None, extra_args=["-W", f"{HOST}:{allowed}"], timeout=30)
        assert (r.returncode, r.stdout) == (0, b"allowed\n"), r.stderr
        r = client.run(opt_server, None, extra_args=["-W", f"{HOST}:{other}"], timeout=30)
        assert (r.returncode, r.stdout) == (255, b"")
        assert b"administratively prohibited" in r.stderr, r.stderr
        assert log_has(opt_server, rf"{HOST}:{other} for {USER} from 127\.0\.0\.1 \d+ refused: "
                                   rf"{HOST}:{other} is not in the key's permitopen list")
        # the session itself still works
        r = client.run(opt_server, "echo session-ok")
        assert (r.returncode, r.stdout) == (0, b"session-ok\n"), r.stderr


@pytest.mark.skipif(not HAVE_AGENT, reason="needs OpenSSH's ssh-agent and ssh-add")
def test_no_agent_forwarding(opt_server, authorize, make_client, tmp_path):
    client = make_client(opt_server.backend, trust=opt_server)
    show = 'echo "sock=${SSH_AUTH_SOCK-unset}"'
    with running_agent(make_key(tmp_path / "agentkey")) as sock:
        args = ["-A", "-o", "IdentitiesOnly=yes"]
        authorize(opt_server, "")
        r = run_with_agent(client, opt_server, show, sock, args)
        assert r.returncode == 0 and r.stdout.startswith(b"sock=/"), (r.stdout, r.stderr)
        for options in ("no-agent-forwarding", "restrict"):
            authorize(opt_server, options)
            r = run_with_agent(client, opt_server, show, sock, args)
            assert (r.returncode, r.stdout) == (0, b"sock=unset\n"), (options, r.stderr)
    assert log_has(opt_server, "agent forwarding requested but disabled")
