"""The SOCKS handshake parser of `-D` (ssh3_client/socks.py)."""

from __future__ import annotations

import pytest

from ssh3.messages import TCP_BY_NAME_CHANNEL_TYPE, ChannelHeader, ChannelHeaderParser
from ssh3_client.forwarding import ForwardError
from ssh3_client.socks import (
    SocksError,
    SocksParser,
    SocksRequest,
    _failure_code,
    parse_dynamic_forward,
    reply,
)

S5_NAME = b"\x05\x01\x00" + b"\x05\x01\x00\x03\x09localhost\x1f\x90"
S4A = b"\x04\x01\x00\x50\x00\x00\x00\x01user\x00example.org\x00"


def feed_bytewise(data: bytes) -> tuple[SocksParser, SocksRequest | None]:
    parser = SocksParser()
    result = None
    for i in range(len(data)):
        assert result is None, "complete before the last byte"
        result = parser.feed(data[i:i + 1])
    return parser, result


def test_socks5_name_incremental() -> None:
    parser, req = feed_bytewise(S5_NAME)
    assert req == SocksRequest(5, "localhost", 8080, True)
    assert bytes(parser.output) == b"\x05\x00"


def test_socks5_ipv4_ipv6_and_early_data() -> None:
    p = SocksParser()
    assert p.feed(b"\x05\x02\x02\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50GET") \
        == SocksRequest(5, "127.0.0.1", 80, False)
    assert p.rest == b"GET"
    p = SocksParser()
    req = p.feed(b"\x05\x01\x00\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x16")
    assert req == SocksRequest(5, "::1", 22, False)


def test_socks5_ip_literal_as_name_is_no_name() -> None:
    p = SocksParser()
    req = p.feed(b"\x05\x01\x00\x05\x01\x00\x03\x0810.0.0.1\x00\x50")
    assert req == SocksRequest(5, "10.0.0.1", 80, False)


def test_socks4_and_4a() -> None:
    _, req = feed_bytewise(b"\x04\x01\x00\x16\x0a\x00\x00\x02\x00")
    assert req == SocksRequest(4, "10.0.0.2", 22, False)
    _, req = feed_bytewise(S4A)
    assert req == SocksRequest(4, "example.org", 80, True)


def test_truncated_needs_more() -> None:
    for data in (S5_NAME, S4A):
        p = SocksParser()
        assert p.feed(data[:-1]) is None


@pytest.mark.parametrize("data,reply_bytes", [
    (b"\x06\x01\x00", b""),  # no such version
    (b"\x05\x00", b"\x05\xff"),  # no methods
    (b"\x05\x01\x02", b"\x05\xff"),  # username/password only
    (b"\x05\x01\x00\x05\x02\x00\x01" + bytes(6), reply(5, 7)),  # BIND
    (b"\x05\x01\x00\x05\x01\x00\x07" + bytes(6), reply(5, 8)),  # bad ATYP
    (b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50", reply(5, 1)),  # empty name
    (b"\x05\x01\x00\x04\x01\x00\x01" + bytes(6), reply(5, 1)),  # wrong request version
    (b"\x04\x02\x00\x50\x01\x02\x03\x04\x00", reply(4, 7)),  # SOCKS4 BIND
    (b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00", reply(4, 1)),  # SOCKS4a empty name
])
def test_invalid(data: bytes, reply_bytes: bytes) -> None:
    with pytest.raises(SocksError) as info:
        SocksParser().feed(data)
    assert info.value.reply == reply_bytes


def test_oversized() -> None:
    # a user ID that never ends
    with pytest.raises(SocksError):
        SocksParser().feed(b"\x04\x01\x00\x50\x01\x02\x03\x04" + b"u" * 300)
    # a SOCKS4a name that never ends
    with pytest.raises(SocksError):
        SocksParser().feed(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + b"n" * 300)
    # fed slowly: still bounded
    p = SocksParser()
    with pytest.raises(SocksError):
        p.feed(b"\x04\x01\x00\x50\x00\x00\x00\x01")
        for _ in range(1000):
            p.feed(b"x")


def test_replies() -> None:
    assert reply(5, 0) == b"\x05\x00\x00\x01" + bytes(6)
    assert reply(5, 5)[1] == 5
    assert reply(4, 0) == b"\x00\x5a" + bytes(6)
    assert reply(4, 5) == b"\x00\x5b" + bytes(6)


def test_failure_codes() -> None:
    assert _failure_code("connect to 127.0.0.1:9 failed: Connection refused", 2) == 5
    assert _failure_code("connect to x:1 failed: Name or service not known", 2) == 4
    assert _failure_code("connect to 10.0.0.1:1 failed: No route to host unreachable", 2) == 4
    assert _failure_code("administratively prohibited", 1) == 2
    assert _failure_code("something", 2) == 1


def test_parse_dynamic_forward() -> None:
    spec = parse_dynamic_forward("1080")
    assert (spec.listen_host, spec.listen_port) == ("127.0.0.1", 1080)
    spec = parse_dynamic_forward("*:1080")
    assert spec.listen_host is None
    spec = parse_dynamic_forward("[::1]:1080")
    assert spec.listen_host == "::1"
    for bad in ("x", "0", "70000", "a:b:c"):
        with pytest.raises(ForwardError):
            parse_dynamic_forward(bad)


def test_name_header_round_trip() -> None:
    header = ChannelHeader(0, TCP_BY_NAME_CHANNEL_TYPE, 30000, ("localhost", 8080))
    wire = header.encode()
    assert wire.endswith(b"\x09localhost\x1f\x90")
    parser = ChannelHeaderParser(expect_signal=True)
    got = None
    for i in range(len(wire)):
        got = parser.feed(wire[i:i + 1])
    assert got == header
    with pytest.raises(ValueError):
        ChannelHeader(0, TCP_BY_NAME_CHANNEL_TYPE, 30000, ("x" * 256, 1)).encode()


@pytest.mark.parametrize("kind", ["-D", "-L"])
def test_busy_port_is_a_forward_error_naming_it(kind):
    """-L and -D share their listener start-up: a port in use is a ForwardError
    that names the address, the spec and the reason; nothing is left listening."""
    import asyncio
    import socket

    from ssh3_client.forwarding import TcpForwarder, parse_local_forward
    from ssh3_client.socks import SocksForwarder

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        if kind == "-D":
            text = f"127.0.0.1:{port}"
            forwarder = SocksForwarder(None, parse_dynamic_forward(text))  # type: ignore[arg-type]
            expected = f"for -D {text!r}: "
        else:
            text = f"127.0.0.1:{port}:127.0.0.1:9"
            forwarder = TcpForwarder(None, parse_local_forward(text),  # type: ignore[arg-type]
                                     ("127.0.0.1", 9))
            expected = f"for {text!r}: "
        with pytest.raises(ForwardError) as info:
            asyncio.run(forwarder.start())
    message = str(info.value)
    assert message.startswith(f"cannot listen on TCP 127.0.0.1:{port} {expected}"), message
    assert "in use" in message.lower(), message
