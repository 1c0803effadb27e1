"""Fixtures shared by the end-to-end tests (tests/test_e2e_*.py)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import (
    BACKENDS,
    STARTED_SERVER_PIDS,
    Client,
    Server,
    make_key,
    pid_alive,
)


@pytest.fixture(scope="session", autouse=True)
def no_leftover_servers() -> Iterator[None]:
    """At the end of the session no ssh3-server the tests started may still run."""
    yield
    leftovers = sorted(pid for pid in STARTED_SERVER_PIDS if pid_alive(pid))
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"ssh3-server processes left running: {leftovers}"


@pytest.fixture(scope="session")
def user_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The key the tests log in with (private key path; `.pub` next to it)."""
    return make_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def authorized_keys(user_key: Path) -> Path:
    path = user_key.parent / "authorized_keys"
    path.write_bytes(user_key.with_name(user_key.name + ".pub").read_bytes())
    path.chmod(0o600)
    return path


@pytest.fixture
def start_server(tmp_path: Path, authorized_keys: Path) -> Iterator[Callable[..., Server]]:
    """Factory: start a real ssh3-server; every one is stopped by PID afterwards."""
    started: list[Server] = []

    def start(backend: str = "aioquic", url_path: str = "/ssh3-term",
              name: str | None = None) -> Server:
        workdir = tmp_path / (name or f"server{len(started)}-{backend}")
        server = Server(workdir, backend, authorized_keys, url_path)
        started.append(server)
        return server.start()

    yield start
    outlived = {}
    for server in started:
        leftovers = server.stop()
        if leftovers:
            outlived[server.workdir.name] = leftovers
    assert not outlived, f"session processes outlived their server (killed now): {outlived}"


@pytest.fixture(scope="module", params=BACKENDS)
def shared_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  authorized_keys: Path) -> Iterator[Server]:
    """One server per backend for a whole test module, for tests that only run
    commands (and must leave it as they found it)."""
    server = Server(tmp_path_factory.mktemp(f"shared-{request.param}"), request.param,
                    authorized_keys)
    with server.running():
        yield server


@pytest.fixture(params=BACKENDS)
def server_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def server(start_server: Callable[..., Server], server_backend: str) -> Server:
    """A fresh server on one of the QUIC backends."""
    return start_server(server_backend)


@pytest.fixture
def make_client(tmp_path: Path, user_key: Path) -> Callable[..., Client]:
    """Factory: a client with its own empty HOME."""
    count = 0

    def make(backend: str = "aioquic", trust: Server | None = None) -> Client:
        nonlocal count
        count += 1
        home = tmp_path / f"home{count}"
        home.mkdir()
        client = Client(home, user_key, backend)
        if trust is not None:
            client.trust(trust)
        return client

    return make


@pytest.fixture
def forwarding_client(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory: `ssh3 -N` with -L/-R/-D/... as a subprocess (test_e2e_forward_tcp's
    ForwardingClient); each is stopped by PID afterwards."""
    from test_e2e_forward_tcp import ForwardingClient  # the class lives with its tests

    started: list[ForwardingClient] = []

    def start(*args: object, **kwargs: object) -> ForwardingClient:
        fc = ForwardingClient(*args, log_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(fc)
        return fc

    yield start
    for fc in started:
        fc.stop()
