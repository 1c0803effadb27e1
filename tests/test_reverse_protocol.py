"""Remote forwarding (EXT_REVERSE_TCP) at the protocol level: the header and request
layouts byte for byte (docs/extensions.md), what the server does with bad or odd
requests, and what the client does with a reverse-tcp channel naming no listener."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_helpers import HOST, Server, library_params, run_async
from test_e2e_forward_tcp import sink_server

from ssh3.errors import NeedMore, ProtocolError
from ssh3.messages import (
    REVERSE_LISTEN_CHANNEL_TYPE,
    REVERSE_TCP_CHANNEL_TYPE,
    ChannelHeader,
    ChannelHeaderParser,
    ChannelOpenConfirmation,
    ChannelOpenFailure,
    MessageParser,
    ReverseTcpBoundRequest,
    parse_header_after_signal,
)
from ssh3_server.reverse_forwarding import listen_hosts

# the examples of docs/extensions.md
LISTEN_HEX = ("c0000000af3627e6 00 1a 726576657273652d7463702d6c697374656e40737368332d7079"
              " 80007530 09 6c6f63616c686f7374 1f90")
REVERSE_HEX = ("c0000000af3627e6 00 13 726576657273652d74637040737368332d7079 80007530"
               " 04 09 3132372e302e302e31 d431")
BOUND_HEX = "4062 19 726576657273652d7463702d626f756e6440737368332d7079 00 80009c40"


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# ---------------------------------------------------------------- wire layout


def test_listen_header_bytes() -> None:
    header = ChannelHeader(0, REVERSE_LISTEN_CHANNEL_TYPE, 30000, ("localhost", 8080))
    assert header.encode() == _hex(LISTEN_HEX)
    parsed, used = parse_header_after_signal(_hex(LISTEN_HEX)[8:])
    assert parsed == header and used == len(_hex(LISTEN_HEX)) - 8


def test_reverse_header_bytes() -> None:
    header = ChannelHeader(0, REVERSE_TCP_CHANNEL_TYPE, 30000, ("127.0.0.1", 54321),
                           listener_id=4)
    assert header.encode() == _hex(REVERSE_HEX)
    assert parse_header_after_signal(_hex(REVERSE_HEX)[8:])[0] == header


def test_bound_request_bytes() -> None:
    assert ReverseTcpBoundRequest(40000).encode() == _hex(BOUND_HEX)
    assert MessageParser().feed(_hex(BOUND_HEX)) == [ReverseTcpBoundRequest(40000)]


def test_header_split_anywhere_parses() -> None:
    """The header may arrive in any pieces (it is parsed incrementally)."""
    data = _hex(REVERSE_HEX)[8:] + b"rest"
    for cut in range(1, len(data) - 4):
        parser = ChannelHeaderParser()
        assert parser.feed(data[:cut]) is None
        header = parser.feed(data[cut:])
        assert header is not None and header.listener_id == 4
        assert parser.rest == b"rest"


@pytest.mark.parametrize("channel_type", [REVERSE_LISTEN_CHANNEL_TYPE,
                                          REVERSE_TCP_CHANNEL_TYPE])
def test_bad_headers_rejected(channel_type: str) -> None:
    prefix = b"\x00" + bytes([len(channel_type)]) + channel_type.encode() + b"\x80\x00\x75\x30"
    if channel_type == REVERSE_TCP_CHANNEL_TYPE:
        prefix += b"\x04"  # listener ID
    with pytest.raises(ProtocolError, match="empty"):
        parse_header_after_signal(prefix + b"\x00" + b"\x1f\x90")
    with pytest.raises(ProtocolError, match="exceeds limit 255"):
        # the length is refused before the 256 bytes are even awaited
        parse_header_after_signal(prefix + b"\x41\x00")
    with pytest.raises(NeedMore):
        parse_header_after_signal(prefix + b"\x01a\x1f")  # port cut short
    with pytest.raises(ValueError):
        ChannelHeader(0, channel_type, 30000, ("", 1), listener_id=4).encode()
    with pytest.raises(ValueError):
        ChannelHeader(0, channel_type, 30000, ("h" * 256, 1), listener_id=4).encode()
    with pytest.raises(ValueError):
        ChannelHeader(0, channel_type, 30000, None, listener_id=4).encode()
    if channel_type == REVERSE_TCP_CHANNEL_TYPE:
        with pytest.raises(ValueError, match="listener"):
            ChannelHeader(0, channel_type, 30000, ("h", 1)).encode()


def test_listen_hosts() -> None:
    assert listen_hosts("localhost", False) == ["127.0.0.1", "::1"]
    assert listen_hosts("*", False) == ["127.0.0.1", "::1"]  # GatewayPorts no
    assert listen_hosts("192.0.2.1", False) == ["127.0.0.1", "::1"]
    assert listen_hosts("127.0.0.1", False) == ["127.0.0.1"]
    assert listen_hosts("*", True) == ["0.0.0.0", "::"]
    assert listen_hosts("", True) == ["0.0.0.0", "::"]
    assert listen_hosts("localhost", True) == ["127.0.0.1", "::1"]
    assert listen_hosts("192.0.2.1", True) == ["192.0.2.1"]


# ---------------------------------------------------------------- against the server


@dataclass(frozen=True)
class _RawHeader:
    """A channel header whose bytes are given as they are (to send what our own
    encoder refuses to produce); Channel reads the other fields."""

    control_stream_id: int
    channel_type: str
    raw: bytes
    max_packet_size: int = 30000
    address: tuple[str, int] | None = None
    listener_id: int | None = None

    def encode(self, *, ipv4_mapped: bool = False) -> bytes:
        return self.raw


def test_server_bad_listen_requests(server: Server, user_key: Path) -> None:
    """An empty or oversized bind address resets that channel (0x10d) and nothing else:
    a valid listen request on the same conversation then works, and its listener
    relays. A reverse-tcp channel opened *to* the server is an unknown type there."""
    from ssh3.aio.channel import ChannelClosed
    from ssh3.aio.client import establish, open_connection

    params = library_params(server, user_key, server.backend)
    type_bytes = bytes([len(REVERSE_LISTEN_CHANNEL_TYPE)]) + REVERSE_LISTEN_CHANNEL_TYPE.encode()

    async def scenario() -> None:
        async with open_connection(params) as proto:
            conv = await establish(proto, params)
            for address in (b"\x00", b"\x41\x00" + b"h" * 256):
                raw = (bytes.fromhex("c0000000af3627e6") + bytes([conv.control_stream_id])
                       + type_bytes + bytes.fromhex("80007530") + address + b"\x1f\x90")
                bad = proto.open_channel(conv, _RawHeader(conv.control_stream_id,  # type: ignore[arg-type]
                                                          REVERSE_LISTEN_CHANNEL_TYPE, raw))
                with pytest.raises(ChannelClosed, match="0x10d"):
                    await asyncio.wait_for(bad.read(), 10)

            reverse = proto.open_channel(conv, ChannelHeader(  # type: ignore[arg-type]
                conv.control_stream_id, REVERSE_TCP_CHANNEL_TYPE, 30000, (HOST, 1),
                listener_id=0))
            refusal = await asyncio.wait_for(reverse.read(), 10)
            assert isinstance(refusal, ChannelOpenFailure) and refusal.reason_code == 3

            listen = proto.open_channel(conv, ChannelHeader(  # type: ignore[arg-type]
                conv.control_stream_id, REVERSE_LISTEN_CHANNEL_TYPE, 30000, (HOST, 0)))
            assert isinstance(await listen.read(), ChannelOpenConfirmation)
            bound = await listen.read()
            assert isinstance(bound, ReverseTcpBoundRequest) and 0 < bound.port < 65536

            # a connection to the server's port arrives as a reverse-tcp channel
            accepted: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            conv.on_channel = accepted.set_result
            reader, writer = await asyncio.open_connection(HOST, bound.port)
            channel = await asyncio.wait_for(accepted, 10)
            assert channel.channel_type == REVERSE_TCP_CHANNEL_TYPE  # type: ignore[attr-defined]
            assert channel.header.listener_id == listen.channel_id  # type: ignore[attr-defined]
            origin = writer.get_extra_info("sockname")
            assert channel.header.address == (HOST, origin[1])  # type: ignore[attr-defined]
            # refusing it closes the accepted connection on the server
            channel.send(ChannelOpenFailure(2, "no", "en"))  # type: ignore[attr-defined]
            channel.send_eof()  # type: ignore[attr-defined]
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 10)
            writer.transport.abort()

            # the client's FIN ends the listener
            listen.send_eof()
            # (on qh3 its FIN rides on an empty Data message, which read() skips)
            assert await asyncio.wait_for(listen.read(), 10) is None
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(HOST, bound.port)

    run_async(scenario(), timeout=60)
    assert server.alive()
    assert "invalid channel header" in server.log() or "protocol error" in server.log()


def test_client_resets_unknown_listener(tmp_path: Path, authorized_keys: Path,
                                        user_key: Path, server_backend: str) -> None:
    """A reverse-tcp channel naming a listener the client never asked for is reset
    (H3_REQUEST_REJECTED) with a log line; the client's real forward still works.
    The server runs in-process so that the test can open that channel from it."""
    from ssh3.aio.channel import ChannelClosed
    from ssh3.aio.client import establish, open_connection
    from ssh3_client.reverse_forwarding import RemoteForwarding, parse_remote_forward
    from ssh3_server.server import ServerConfig, SSH3Server

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    from ssh3.certs import generate_self_signed

    generate_self_signed(str(cert), str(key))

    async def scenario(sink_port: int) -> None:
        srv = SSH3Server(ServerConfig(bind_host=HOST, bind_port=0, cert_path=str(cert),
                                      key_path=str(key), backend=server_backend,
                                      authorized_keys_files=[str(authorized_keys)]))
        host, port = await srv.start()
        fake = Server(tmp_path, server_backend, authorized_keys)
        fake.port = port
        params = library_params(fake, user_key, server_backend)
        params.verify_certificate = None  # type: ignore[attr-defined]
        params.insecure = True  # type: ignore[attr-defined]
        reports: list[str] = []
        try:
            async with open_connection(params) as proto:  # type: ignore[arg-type]
                conv = await establish(proto, params)  # type: ignore[arg-type]
                specs = [parse_remote_forward(f"0:{HOST}:{sink_port}")]
                async with RemoteForwarding(conv, specs, report=reports.append) as fwd:
                    assert reports and reports[0].startswith("Allocated port")
                    (server_conv,) = list(srv._conversations)
                    bogus = server_conv.protocol.open_channel(server_conv, ChannelHeader(
                        server_conv.control_stream_id, REVERSE_TCP_CHANNEL_TYPE, 30000,
                        ("192.0.2.7", 4444), listener_id=1 << 20))
                    with pytest.raises(ChannelClosed, match="0x10b"):
                        await asyncio.wait_for(bogus.read(), 10)
                    # the real forward is unaffected
                    bound = next(iter(fwd.forwards.values())).bound_port
                    reader, writer = await asyncio.open_connection(HOST, bound)
                    writer.write(b"abc")
                    writer.write_eof()
                    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"3 ")
                    writer.close()
        finally:
            await srv.close()

    with sink_server() as sink_port:
        run_async(scenario(sink_port), timeout=60)


def test_listen_policy() -> None:
    """What the server refuses before binding (served end to end in
    test_e2e_reverse for -disable-remote-forwarding): privileged ports for users other
    than root, and what a key's permitlisten= does not allow."""
    from ssh3_server.permissions import Permissions
    from ssh3_server.reverse_forwarding import ReverseContext, _policy_refusal

    user = ReverseContext("alice", 1000, "192.0.2.1 5000")
    assert _policy_refusal("localhost", 8080, user) is None
    assert _policy_refusal("localhost", 0, user) is None
    assert "privileged" in (_policy_refusal("localhost", 80, user) or "")
    assert _policy_refusal("localhost", 80, ReverseContext("root", 0, "192.0.2.1 5000")) is None
    off = ReverseContext("alice", 1000, "p", Permissions(allow_remote_forwarding=False))
    assert "disabled" in (_policy_refusal("localhost", 8080, off) or "")
    keyed = ReverseContext("alice", 1000, "p",
                           Permissions(permit_listen=(("localhost", 8080),)))
    assert _policy_refusal("localhost", 8080, keyed) is None
    assert "not permitted" in (_policy_refusal("localhost", 8081, keyed) or "")
    assert "not permitted" in (_policy_refusal("*", 8080, keyed) or "")
