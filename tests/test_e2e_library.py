"""The client library against a real server: several conversations on one QUIC
connection, several session channels in one conversation, all independent."""

from __future__ import annotations

import asyncio

import pytest
from e2e_helpers import exec_on as _run
from e2e_helpers import library_params, run_async

from ssh3.aio.channel import ChannelClosed
from ssh3.aio.client import establish, open_connection
from ssh3.messages import ChannelData, ExecRequest


@pytest.mark.parametrize("client_backend", ["aioquic", "qh3"])
def test_conversations_and_channels_are_independent(server, user_key, client_backend):
    params = library_params(server, user_key, client_backend)

    async def scenario():
        async with open_connection(params) as proto:
            conv_a = await establish(proto, params)
            conv_b = await establish(proto, params)
            assert conv_a.control_stream_id != conv_b.control_stream_id

            jobs = {}
            for conv, letter in ((conv_a, "A"), (conv_b, "B")):
                for n in (1, 2):
                    name = f"{letter}{n}"
                    code = 10 * (ord(letter) - ord("A") + 1) + n  # A1 -> 11, B2 -> 22
                    # the sleeps make the four commands overlap
                    cmd = f"sleep 0.{n}; echo {name}; echo e{name} >&2; exit {code}"
                    jobs[name] = (conv.open_channel("session"), cmd.encode(), code)
            results = await asyncio.gather(*(_run(ch, cmd) for ch, cmd, _ in jobs.values()))
            for (name, (_, _, code)), (out, err, status) in zip(jobs.items(), results,
                                                                strict=True):
                assert (out, err, status) == (f"{name}\n".encode(), f"e{name}\n".encode(),
                                              code), name

            # end conversation A; B goes on
            conv_a.close()
            out, err, status = await _run(conv_b.open_channel("session"), b"echo B3")
            assert (out, status) == (b"B3\n", 0)
            assert not conv_b.ended.is_set()

            # the server no longer knows A: a channel naming it is refused
            stale = conv_a.open_channel("session")
            stale.send(ExecRequest(b"echo must-not-run"))
            with pytest.raises(ChannelClosed):
                while (msg := await stale.read()) is not None:
                    assert not isinstance(msg, ChannelData), msg

            # and B still works after that
            out, err, status = await _run(conv_b.open_channel("session"), b"echo B4")
            assert (out, status) == (b"B4\n", 0)
            # a third conversation on the same connection
            conv_c = await establish(proto, params)
            out, err, status = await _run(conv_c.open_channel("session"), b"echo C1")
            assert (out, status) == (b"C1\n", 0)

    run_async(scenario(), timeout=60)
    assert server.alive()


def test_many_sessions_one_after_another_in_one_conversation(server, user_key):
    """A finished session must give its QUIC stream back: a long-lived conversation
    can run more sessions than the peer's initial stream limit (100 with qh3, 128
    with aioquic), one after another."""
    params = library_params(server, user_key, server.backend)
    count = 150

    async def scenario():
        async with open_connection(params) as proto:
            conv = await establish(proto, params)
            for i in range(count):
                try:
                    out, _, status = await asyncio.wait_for(
                        _run(conv.open_channel("session"), f"echo {i}".encode()), 10)
                except (TimeoutError, ValueError) as exc:
                    raise AssertionError(f"session {i} of {count} failed: {exc!r}") from exc
                assert (out, status) == (f"{i}\n".encode(), 0)

    run_async(scenario(), timeout=120)
