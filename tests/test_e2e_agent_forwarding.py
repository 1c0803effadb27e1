"""Agent forwarding end to end (PROTOCOL.md §3.7): a real `ssh-agent` holding a key,
the real `ssh3 -A` client and a real ssh3-server; `ssh-add -l` runs remotely."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_helpers import Client, Server, make_key, wait_for
from ssh_agent_helpers import HAVE_AGENT, running_agent

pytestmark = pytest.mark.skipif(not HAVE_AGENT, reason="needs OpenSSH's ssh-agent and ssh-add")

# the agent keys must not be used to log in (they are not authorized): only -i
NO_AGENT_LOGIN = ["-o", "IdentitiesOnly=yes"]
SHOW = 'echo "sock=[${SSH_AUTH_SOCK-unset}]"; ssh-add -l; echo "rc=$?"'


class Agent:
    def __init__(self, sock: str, fingerprint: str) -> None:
        self.sock = sock
        self.fingerprint = fingerprint


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    key = make_key(tmp_path / "agentkey")
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(key)], check=True, timeout=10,
                                 capture_output=True, text=True).stdout.split()[1]
    with running_agent(key) as sock:
        yield Agent(sock, fingerprint)


def _run(client: Client, server: Server, agent: Agent, extra: list[str]) -> tuple[str, str]:
    proc = subprocess.run(client.argv(server, SHOW, extra_args=[*NO_AGENT_LOGIN, *extra]),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=client.env(SSH_AUTH_SOCK=agent.sock), timeout=60,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def _remote_sock(stdout: str) -> str:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("sock=["))
    return line[len("sock=["):-1]


# both spellings, each QUIC backend at least once (no skipped combinations)
@pytest.mark.parametrize("backend, flag", [("aioquic", "-A"), ("qh3", "-A"),
                                           ("aioquic", "-forward-agent")])
def test_agent_forwarded_and_cleaned_up(start_server: Callable[..., Server],
                                        make_client: Callable[..., Client], agent: Agent,
                                        backend: str, flag: str) -> None:
    server = start_server(backend)
    client = make_client(backend, trust=server)
    stdout, _ = _run(client, server, agent, [flag])
    assert agent.fingerprint in stdout
    assert "rc=0" in stdout
    remote = _remote_sock(stdout)
    assert os.path.basename(remote) == f"agent.{server.pid}"
    # the socket and its private directory go with the conversation
    assert wait_for(lambda: not os.path.exists(os.path.dirname(remote)), 10.0), remote


def test_without_flag_no_agent(start_server: Callable[..., Server],
                               make_client: Callable[..., Client], agent: Agent) -> None:
    server = start_server("aioquic")
    client = make_client("aioquic", trust=server)
    stdout, _ = _run(client, server, agent, [])
    assert "sock=[unset]" in stdout
    assert agent.fingerprint not in stdout


def test_disabled_on_server(tmp_path: Path, authorized_keys: Path,
                            make_client: Callable[..., Client], agent: Agent) -> None:
    server = Server(tmp_path / "noagent", "aioquic", authorized_keys,
                    extra_args=["-disable-agent-forwarding"])
    try:
        server.start()
        client = make_client("aioquic", trust=server)
        stdout, _ = _run(client, server, agent, ["-A"])
        assert "sock=[unset]" in stdout
        assert "agent forwarding requested but disabled" in server.log()
    finally:
        assert not server.stop()


def test_many_agent_connections(start_server: Callable[..., Server],
                                make_client: Callable[..., Client], agent: Agent) -> None:
    """Sequential and concurrent agent clients each get their own channel."""
    server = start_server("aioquic")
    client = make_client("aioquic", trust=server)
    cmd = ('for i in 1 2 3; do ssh-add -l; done; '
           '(ssh-add -l & ssh-add -l & ssh-add -l & wait) ; echo done')
    proc = subprocess.run(client.argv(server, cmd, extra_args=[*NO_AGENT_LOGIN, "-A"]),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=client.env(SSH_AUTH_SOCK=agent.sock), timeout=60,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(agent.fingerprint) == 6, proc.stdout
