"""SendEnv / SetEnv end to end: the `env` extension (EXT_ENV) between the real
`ssh3` and a real `ssh3-server`, on both QUIC backends."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from e2e_helpers import BACKENDS, Client, Server

from ssh3.connection import EXT_ENV, OUR_EXTENSIONS
from ssh3.messages import EnvRequest, parse_message
from ssh3_client.environment import EnvError, collect
from ssh3_server.environment import EnvCollector, accepts, parse_accept_env


def _run_env(client: Client, server: Server, extra_args: list[str], env: dict[str, str],
             command: str = "env") -> subprocess.CompletedProcess:
    if "-F" not in extra_args:  # /etc/ssh/ssh_config often has SendEnv LANG LC_*
        extra_args = ["-F", "none", *extra_args]
    return subprocess.run(client.argv(server, command, extra_args=extra_args),
                          stdin=subprocess.DEVNULL, capture_output=True,
                          env=client.env(**env), timeout=60, start_new_session=True)


def _vars(out: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)


@pytest.fixture(params=BACKENDS)
def own_server(request, tmp_path: Path, authorized_keys: Path):
    """A server started with extra flags (the test passes them through the factory)."""
    started: list[Server] = []

    def start(*extra: str) -> Server:
        server = Server(tmp_path / f"srv{len(started)}", request.param, authorized_keys,
                        extra_args=list(extra))
        started.append(server)
        return server.start()

    yield start
    for server in started:
        assert not server.stop()


# ---------------------------------------------------------------- unit


def test_wire_format():
    msg = EnvRequest("LANG", b"C.UTF-8")
    # documented in docs/extensions.md
    assert msg.encode().hex() == "406203656e7600044c414e4707432e5554462d38"
    assert parse_message(msg.encode()) == (msg, len(msg.encode()))
    assert OUR_EXTENSIONS & EXT_ENV == 0x20


def test_client_collect():
    environ = {"LANG": "fr_FR.UTF-8", "LC_ALL": "C", "LC_TIME": "x", "HOME": "/h", "FOO": "1"}
    got = dict(collect(["LANG LC_*", "-LC_*", "LC_ALL"], ["FOO=set", "FOO=second", "B=a b"],
                       environ))
    assert got == {"LANG": b"fr_FR.UTF-8", "LC_ALL": b"C", "FOO": b"set", "B": b"a b"}
    with pytest.raises(EnvError):
        collect([], ["novalue"], {})


def test_server_policy():
    patterns = parse_accept_env("LANG LC_*, HOME FOO?")
    assert patterns == ("LANG", "LC_*", "HOME", "FOO?")
    assert accepts(patterns, "LC_ALL") and accepts(patterns, "FOO1") and accepts(patterns, "HOME")
    assert not accepts(patterns, "FOO") and not accepts(patterns, "lang")
    # protected names need a literal entry: * does not let PATH through
    assert not accepts(("*",), "PATH") and accepts(("*",), "ANYTHING")
    env = EnvCollector(("*",))
    assert not env.offer("A=B", b"x") and not env.offer("", b"x")
    assert not env.offer("V", b"a\0b") and not env.offer("V", b"x" * 20000)
    for i in range(64):
        assert env.offer(f"V{i}", b"x")
    assert not env.offer("ONE_TOO_MANY", b"x")
    assert env.offer("V0", b"replaced") and env.accepted["V0"] == "replaced"


# ---------------------------------------------------------------- end to end


def test_sendenv_setenv_arrive(own_server, make_client):
    server = own_server()  # default -accept-env "LANG LC_*"
    client = make_client(server.backend, trust=server)
    r = _run_env(client, server,
                 ["-o", "SendEnv=LANG LC_* NOTACCEPTED", "-o", "SetEnv=LC_TIME=set_time"],
                 {"LANG": "fr_FR.UTF-8", "LC_ALL": "C.UTF-8", "NOTACCEPTED": "no"})
    assert r.returncode == 0, r.stderr
    got = _vars(r.stdout)
    assert got["LANG"] == "fr_FR.UTF-8" and got["LC_ALL"] == "C.UTF-8"
    assert got["LC_TIME"] == "set_time"
    assert "NOTACCEPTED" not in got


def test_accept_env_and_protected_names(own_server, make_client):
    server = own_server("-accept-env", "FOO USER HOM*", "-v")
    client = make_client(server.backend, trust=server)
    r = _run_env(client, server,
                 ["-o", "SetEnv=FOO=bar USER=other HOME=/nowhere LANG=C"], {})
    assert r.returncode == 0, r.stderr
    got = _vars(r.stdout)
    assert got["FOO"] == "bar"
    assert got["USER"] == "other"  # named literally: accepted (sshd semantics)
    assert got["HOME"] != "/nowhere"  # only a wildcard matched: refused
    assert "LANG" not in got  # not in this server's list
    log = server.log()
    assert "env 'HOME' refused" in log and "env 'LANG' refused" in log


def test_config_file(own_server, make_client, tmp_path):
    server = own_server()
    client = make_client(server.backend, trust=server)
    config = tmp_path / "config"
    config.write_text("Host *\n  SendEnv LC_*\n  SetEnv LANG=\"de_DE.UTF-8\" LC_PAPER=a4\n")
    r = _run_env(client, server, ["-F", str(config)], {"LC_NUMERIC": "en_GB"})
    assert r.returncode == 0, r.stderr
    got = _vars(r.stdout)
    assert (got["LANG"], got["LC_PAPER"], got["LC_NUMERIC"]) == ("de_DE.UTF-8", "a4", "en_GB")


def test_not_sent_without_extension(own_server, make_client):
    """A server that does not announce EXT_ENV (like the reference, which would end
    the conversation) gets no `env` request: the session works, the -v log says so."""
    server = own_server("-extensions-mask", hex(OUR_EXTENSIONS & ~EXT_ENV), "-v")
    client = make_client(server.backend, trust=server)
    r = _run_env(client, server, ["-v", "-o", "SendEnv=LANG", "-o", "SetEnv=LC_ALL=C"],
                 {"LANG": "fr_FR.UTF-8"})
    assert r.returncode == 0, r.stderr
    assert "LANG" not in _vars(r.stdout) and "LC_ALL" not in _vars(r.stdout)
    assert b"SendEnv/SetEnv (LANG, LC_ALL) not sent" in r.stderr
    assert "env " not in server.log()  # nothing reached the server's env policy
