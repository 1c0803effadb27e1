"""2-RTT sessions (EXT_EARLY_CHANNELS): the client sends its session channel right
behind the CONNECT; the server holds it until authentication ends, runs it after the
200, and drops it unread after a refusal."""

from __future__ import annotations

import asyncio
import re

import pytest
from e2e_helpers import exec_on, library_params, make_key, run_async

from ssh3.aio.client import establish, open_connection
from ssh3.connection import EXT_EARLY_CHANNELS
from ssh3.messages import ChannelData, ExecRequest


def _line_index(log: str, pattern: str) -> int:
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if re.search(pattern, line):
            return i
    raise AssertionError(f"no line matches {pattern!r} in:\n{log}")


def test_session_channel_arrives_before_the_200(server, make_client):
    client = make_client(server.backend, trust=server)
    r = client.run(server, "echo early; exit 3")
    assert (r.returncode, r.stdout) == (3, b"early\n"), r.stderr
    log = server.log()
    # order of events on the server: the channel was there (held) before the 200
    # went out ("started" is logged right after it), and ran only after it
    held = _line_index(log, r"channel 4 held until conversation 0 is authenticated")
    started = _line_index(log, r"conversation 0 for \S+ from .* started")
    ran = _line_index(log, r"session 4: exec b'echo early; exit 3'")
    assert held < started < ran, log


def test_refused_login_runs_nothing(server, make_client, tmp_path):
    client = make_client(server.backend, trust=server)
    stranger = make_key(tmp_path / "stranger")
    marker = tmp_path / "must-not-exist"
    r = client.run(server, f"touch {marker}", key=stranger)
    assert r.returncode == 255
    assert b"401" in r.stderr, r.stderr
    assert not marker.exists()
    log = server.log()
    assert "channel 4 held until conversation 0" in log
    assert re.search(r"channel 4 held for conversation 0 .* dropped: the CONNECT was refused",
                     log), log
    assert "session 4" not in log
    assert "ssh3.server: session" not in log  # no session of any kind was started


def test_retry_with_the_next_identity_runs_the_command_once(server, make_client, tmp_path):
    """First identity refused (its early channel dropped), second accepted: the
    command runs exactly once, on the second conversation."""
    client = make_client(server.backend, trust=server)
    stranger = make_key(tmp_path / "stranger")
    out = tmp_path / "runs.txt"
    r = client.run(server, f"echo run >> {out}; echo done", key=stranger,
                   extra_args=["-i", str(client.key)])
    assert (r.returncode, r.stdout) == (0, b"done\n"), r.stderr
    assert out.read_text() == "run\n"
    log = server.log()
    dropped = _line_index(log, r"channel 4 held for conversation 0 .* dropped")
    started = _line_index(log, r"conversation 8 for \S+ from .* started")
    assert dropped < started, log
    assert "channel 12 held until conversation 8" in log


@pytest.mark.parametrize("client_backend", ["aioquic", "qh3"])
def test_library_establish_with_early_callback(server, user_key, client_backend):
    params = library_params(server, user_key, client_backend)

    async def scenario():
        async with open_connection(params) as proto:
            opened = []

            def early(conv):
                ch = conv.open_channel("session")
                ch.send(ExecRequest(b"echo lib-early"))
                ch.send_eof()
                opened.append(ch)

            conv = await establish(proto, params, early=early)
            assert proto.connection.peer_extensions & EXT_EARLY_CHANNELS
            assert [ch.control_stream_id for ch in opened] == [conv.control_stream_id]
            return await _read_all(opened[0])

    assert run_async(scenario(), timeout=60) == b"lib-early\n"
    assert "held until conversation" in server.log()


async def _read_all(channel) -> bytes:
    from ssh3.messages import ExitStatusRequest

    out = b""
    while True:
        msg = await asyncio.wait_for(channel.read(), 20)
        if msg is None or isinstance(msg, ExitStatusRequest):
            return out
        if isinstance(msg, ChannelData):
            out += msg.data


def test_without_the_callback_the_usual_three_rtt_flow(server, user_key):
    """What a reference client does (nothing before the 200): unchanged."""
    params = library_params(server, user_key, server.backend)

    async def scenario():
        async with open_connection(params) as proto:
            conv = await establish(proto, params)
            return await exec_on(conv.open_channel("session"), b"echo plain")

    assert run_async(scenario(), timeout=60)[:2] == (b"plain\n", b"")
    assert "held until" not in server.log()
