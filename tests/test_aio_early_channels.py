"""EXT_EARLY_CHANNELS in the asyncio layer, over a real QUIC connection on loopback:
a server handler that authenticates only when the test says so, so that what is held,
replayed and dropped does not depend on timing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from e2e_helpers import run_async
from quic_pair import certificate, server_configuration

from ssh3.aio.channel import ChannelClosed
from ssh3.aio.client import ConnectParams, open_connection, start_connect
from ssh3.aio.conversation import Conversation
from ssh3.aio.early import MAX_BYTES_PER_CONVERSATION, MAX_CHANNELS_PER_CONVERSATION
from ssh3.aio.early_client import open_early
from ssh3.aio.protocol import ProtocolHandler, protocol_factory
from ssh3.backends import get_backend
from ssh3.connection import EXT_EARLY_CHANNELS, RequestReceived
from ssh3.messages import ChannelData, ExecRequest


class HoldingServer(ProtocolHandler):
    """Takes every CONNECT as "being authenticated" until `accept`/`refuse`."""

    early_channels = True

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[object, RequestReceived]] = asyncio.Queue()
        self.protocols: list[object] = []

    def connection_started(self, protocol) -> None:
        self.protocols.append(protocol)

    def request_received(self, protocol, event: RequestReceived) -> None:
        protocol.expect_early_channels(event.stream_id)
        self.requests.put_nowait((protocol, event))

    def accept(self, protocol, event: RequestReceived) -> list:
        conv = Conversation(protocol, event.stream_id)
        got: list = []
        conv.on_channel = got.append
        protocol.connection.send_headers(event.stream_id, [(b":status", b"200")])
        protocol.release_early_channels(conv)
        protocol.transmit_soon()
        return got

    def refuse(self, protocol, event: RequestReceived) -> None:
        protocol.connection.send_headers(event.stream_id, [(b":status", b"401")],
                                         end_stream=True)
        protocol.discard_early_channels(event.stream_id, "refused by the test")
        protocol.transmit_soon()


async def _serve(tmp_path: Path, backend_name: str):
    backend = get_backend(backend_name)
    cert, key = certificate(tmp_path)
    handler = HoldingServer()
    server = await backend.serve("127.0.0.1", 0, configuration=server_configuration(
        backend, cert, key), create_protocol=protocol_factory(backend, handler))
    port = server._transport.get_extra_info("sockname")[1]
    params = ConnectParams(host="127.0.0.1", port=port, path="/ssh3-term", user="u",
                           identities=[], backend=backend_name, insecure=True)
    return server, handler, params


@contextlib.asynccontextmanager
async def _connected(tmp_path: Path, backend: str) -> AsyncIterator[tuple]:
    """(client protocol, HoldingServer, params): a connection to a fresh server whose
    SETTINGS have arrived; the server is closed after the block."""
    server, handler, params = await _serve(tmp_path, backend)
    try:
        async with open_connection(params) as proto:
            await asyncio.wait_for(proto.settings_received.wait(), 5)
            yield proto, handler, params
    finally:
        server.close()


async def _closed(channel) -> bool:
    try:
        while await asyncio.wait_for(channel.read(), 10) is not None:
            pass
    except ChannelClosed:
        return True
    return False


@pytest.mark.parametrize("backend", ["aioquic", "qh3"])
def test_held_until_accepted_then_replayed_in_order(tmp_path, backend):
    async def scenario():
        async with _connected(tmp_path, backend) as (proto, handler, params):
            assert proto.connection.peer_extensions & EXT_EARLY_CHANNELS
            opened = []

            def early(conv):
                for i in range(MAX_CHANNELS_PER_CONVERSATION + 1):
                    ch = conv.open_channel("session")
                    ch.send(ExecRequest(f"cmd{i}".encode()))
                    opened.append(ch)

            sid = start_connect(proto, params, "Bearer x")
            open_early(proto, sid, early)
            sproto, event = await asyncio.wait_for(handler.requests.get(), 10)
            # one over the cap: reset at once, while the CONNECT is still pending
            assert await _closed(opened[-1])
            assert len(sproto.early) == MAX_CHANNELS_PER_CONVERSATION
            assert not sproto.conversations  # nothing reached a conversation
            got = handler.accept(sproto, event)
            assert [ch.channel_id for ch in got] == [ch.channel_id for ch in opened[:-1]]
            for i, ch in enumerate(got):  # what was sent early is there, in order
                assert await asyncio.wait_for(ch.read(), 5) == ExecRequest(
                    f"cmd{i}".encode())
            assert len(sproto.early) == 0

    run_async(scenario(), timeout=60)


@pytest.mark.parametrize("backend", ["aioquic", "qh3"])
def test_refusal_drops_held_channels_unread(tmp_path, backend):
    async def scenario():
        async with _connected(tmp_path, backend) as (proto, handler, params):
            opened = []
            sid = start_connect(proto, params, "Bearer x")
            open_early(proto, sid, lambda conv: opened.append(conv.open_channel("session")))
            opened[0].send(ExecRequest(b"touch x"))
            sproto, event = await asyncio.wait_for(handler.requests.get(), 10)
            while not len(sproto.early):  # the channel follows the CONNECT
                await asyncio.sleep(0.01)
            held = dict(sproto.channels)
            handler.refuse(sproto, event)
            assert await _closed(opened[0])
            assert len(sproto.early) == 0 and not sproto.channels
            assert all(ch.error for ch in held.values())
            assert not sproto.conversations

    run_async(scenario(), timeout=60)


@pytest.mark.parametrize("backend", ["aioquic", "qh3"])
def test_byte_cap_resets_the_held_channels(tmp_path, backend):
    async def scenario():
        async with _connected(tmp_path, backend) as (proto, handler, params):
            opened = []

            def flood(conv):
                ch = conv.open_channel("session")
                for _ in range(MAX_BYTES_PER_CONVERSATION // 1000 + 2):
                    ch.send(ChannelData(b"x" * 1000))
                opened.append(ch)

            sid = start_connect(proto, params, "Bearer x")
            open_early(proto, sid, flood)
            sproto, event = await asyncio.wait_for(handler.requests.get(), 10)
            assert await _closed(opened[0])
            assert len(sproto.early) == 0
            # the CONNECT itself is still answered, and a new channel is taken
            got = handler.accept(sproto, event)
            assert got == []
            conv = proto.conversations[sid]
            conv.open_channel("session").send(ExecRequest(b"later"))
            while not got:
                await asyncio.sleep(0.01)
            assert await asyncio.wait_for(got[0].read(), 5) == ExecRequest(b"later")

    run_async(scenario(), timeout=60)


@pytest.mark.parametrize("backend", ["aioquic", "qh3"])
def test_version_retry_sends_the_early_channel_again(tmp_path, backend):
    """403 with an older server version: the client drops the first early channel
    (the server drops it too, unread), retries with that version, and opens a fresh
    channel behind the new CONNECT, which the server gets after its 200."""
    from ssh3.aio.client import Identity, establish

    async def scenario():
        server, handler, params = await _serve(tmp_path, backend)
        params.identities = [Identity("test", lambda user, conv_id: "Bearer x")]
        try:
            async with open_connection(params) as proto:
                opened = []

                def early(conv):
                    ch = conv.open_channel("session")
                    ch.send(ExecRequest(f"run {len(opened)}".encode()))
                    opened.append(ch)

                task = asyncio.ensure_future(establish(proto, params, early=early))
                sproto, first = await asyncio.wait_for(handler.requests.get(), 10)
                while not len(sproto.early):  # the channel follows the CONNECT
                    await asyncio.sleep(0.01)
                sproto.connection.send_headers(first.stream_id, [
                    (b":status", b"403"), (b"server", b"SSH 3.0 francoismichel/ssh3 0.1.5")],
                    end_stream=True)
                sproto.discard_early_channels(first.stream_id, "version refused")
                sproto.transmit_soon()
                sproto2, second = await asyncio.wait_for(handler.requests.get(), 10)
                assert dict(second.headers)[b"user-agent"].startswith(
                    b"SSH 3.0 francoismichel/ssh3 0.1.5")
                while not len(sproto.early):
                    await asyncio.sleep(0.01)
                got = handler.accept(sproto2, second)
                conv = await asyncio.wait_for(task, 10)
                assert conv.control_stream_id == second.stream_id
                assert len(opened) == 2 and opened[0].error is not None
                assert [ch.channel_id for ch in got] == [opened[1].channel_id]
                assert await asyncio.wait_for(got[0].read(), 5) == ExecRequest(b"run 1")
        finally:
            server.close()

    run_async(scenario(), timeout=60)
