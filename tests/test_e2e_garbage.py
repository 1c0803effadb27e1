"""The server survives garbage: a bad channel costs that stream, never the server
(and, where the stream alone can be refused, not even the connection)."""

from __future__ import annotations

import asyncio

import pytest
from e2e_helpers import (
    child_pids,
    exec_on,
    get_headers,
    library_params,
    raw_connect,
    run_async,
    wait_for,
)

from ssh3.aio.channel import ChannelClosed
from ssh3.aio.client import establish, open_connection
from ssh3.messages import ChannelData, ChannelHeader, ExecRequest

SIGNAL = bytes.fromhex("c0000000af3627e6")
H3_REQUEST_INCOMPLETE = 0x10D
MAX_VARINT = bytes.fromhex("ffffffffffffffff")  # 2**62 - 1

CHANNEL_GARBAGE = {
    # a well-formed header naming a conversation that does not exist
    "unknown control stream": SIGNAL + bytes.fromhex("4400") + b"\x07session" + b"\x80\x00\x75\x30",
    # channel type length of 2**30 bytes
    "oversized type length": SIGNAL + b"\x00" + bytes.fromhex("80000000") + b"xx",
    # control stream ID and type length at the varint maximum
    "maximal varints": SIGNAL + MAX_VARINT + MAX_VARINT + b"\xde\xad\xbe\xef" * 8,
    # the stream ends inside the header
    "truncated header": SIGNAL + b"\x00\x40",
}


def _assert_serves(server, make_client):
    assert server.alive(), server.log()[-3000:]
    client = make_client(server.backend, trust=server)
    r = client.run(server, "echo ok")
    assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr


@pytest.mark.parametrize("case", list(CHANNEL_GARBAGE))
def test_garbage_channel_is_reset_and_connection_survives(server, make_client, case):
    payload = CHANNEL_GARBAGE[case]
    fin = case == "truncated header"

    async def go():
        async with raw_connect(server) as proto:
            sid = proto.open_raw_stream(payload, end_stream=fin)
            state = proto.raw[sid]
            await proto.wait_until(lambda: state.reset is not None, 10.0)
            # some random bytes in a QUIC DATAGRAM frame are dropped too
            proto._quic.send_datagram_frame(b"\xff\xff\x00garbage")
            proto.transmit()
            after = await proto.request(get_headers(server, "/"), end_stream=True)
            return state.reset, proto.stop_sending.get(sid), after.status, proto.terminated

    reset, stop, status_after, terminated = run_async(go(), timeout=40)
    assert reset == H3_REQUEST_INCOMPLETE, (reset, stop, terminated)
    assert terminated is None
    assert status_after == 404  # the same connection still answers
    _assert_serves(server, make_client)


def test_http3_garbage_costs_at_most_the_connection(server, make_client):
    """Bytes that are neither an SSH3 channel nor valid HTTP/3 on a request stream:
    a HEADERS frame whose QPACK block does not decode."""
    async def go():
        async with raw_connect(server) as proto:
            sid = proto.open_raw_stream(bytes.fromhex("0108ffffffffffffffff"), end_stream=True)
            await proto.wait_until(lambda: proto.terminated is not None
                                   or proto.raw[sid].reset is not None, 10.0)
            return proto.terminated, proto.raw[sid].reset

    terminated, reset = run_async(go(), timeout=30)
    assert terminated is not None or reset is not None, "the server ignored the garbage"
    _assert_serves(server, make_client)


@pytest.mark.parametrize("client_backend", ["aioquic", "qh3"])
def test_invalid_message_type_resets_only_that_channel(server, make_client, user_key,
                                                       client_backend):
    params = library_params(server, user_key, client_backend)

    async def scenario():
        async with open_connection(params) as proto:
            conv = await establish(proto, params)

            # 1. a new channel whose first message has type 93 (40 5d 00)
            header = ChannelHeader(conv.control_stream_id, "session", 30000)
            bad = proto.open_channel(conv, header, first=bytes.fromhex("405d00"))
            with pytest.raises(ChannelClosed):
                while (msg := await asyncio.wait_for(bad.read(), 10)) is not None:
                    assert not isinstance(msg, ChannelData), msg

            # 2. garbage in the middle of a running command: the channel is reset and
            # the command is not left running
            busy = conv.open_channel("session")
            busy.send(ExecRequest(b"echo started; exec sleep 300"))
            msg = await asyncio.wait_for(busy.read(), 10)
            while not isinstance(msg, ChannelData):
                msg = await asyncio.wait_for(busy.read(), 10)
            assert msg.data == b"started\n"
            proto.send_channel_bytes(busy.channel_id, bytes.fromhex("405e") + MAX_VARINT)
            with pytest.raises(ChannelClosed):
                while await asyncio.wait_for(busy.read(), 10) is not None:
                    pass

            # the conversation itself goes on
            out, _, status = await exec_on(conv.open_channel("session"), b"echo still-here")
            assert (out, status) == (b"still-here\n", 0)

    run_async(scenario(), timeout=60)
    # the sleep of the reset session was hung up (the server has no children left)
    assert wait_for(lambda: not child_pids(server.pid), 10), child_pids(server.pid)
    _assert_serves(server, make_client)
