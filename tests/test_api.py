"""The library API against a real server: `async with ssh3.connect(...) as conn`."""

from __future__ import annotations

import pytest
from e2e_helpers import BACKENDS, run_async

import ssh3
from ssh3.aio.client import HostKeyError


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_collects_output_status_and_stderr(shared_server, user_key, tmp_path, backend):
    known = tmp_path / "known_hosts"
    known.write_text(shared_server.known_hosts_line())

    async def go() -> list[ssh3.CompletedProcess]:
        async with ssh3.connect(shared_server.target(), client_keys=[str(user_key)],
                                known_hosts=str(known), backend=backend) as conn:
            return [await conn.run("echo out; echo err >&2; exit 3"),
                    await conn.run("cat", input=b"x" * 100000),
                    await conn.run("kill -TERM $$")]

    status, echoed, killed = run_async(go())
    assert (status.returncode, status.stdout, status.stderr) == (3, b"out\n", b"err\n")
    assert echoed.returncode == 0 and echoed.stdout == b"x" * 100000
    assert (killed.exit_status, killed.exit_signal, killed.returncode) == (None, "TERM", 143)


def test_check_raises_and_unknown_hosts_are_refused(shared_server, user_key, tmp_path):
    known = tmp_path / "known_hosts"

    async def unknown() -> None:
        async with ssh3.connect(shared_server.target(), client_keys=[str(user_key)],
                                known_hosts=str(known)):
            pass

    with pytest.raises(HostKeyError, match="accept_new"):
        run_async(unknown())

    async def failing() -> None:
        async with ssh3.connect(shared_server.target(), client_keys=[str(user_key)],
                                known_hosts=str(known), accept_new=True) as conn:
            await conn.run("exit 4", check=True)

    with pytest.raises(ssh3.ProcessError) as info:
        run_async(failing())
    assert info.value.result.returncode == 4
    assert shared_server.known_hosts_line().split()[2] in known.read_text()  # remembered
