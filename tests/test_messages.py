"""Channel messages, headers and datagrams against PROTOCOL.md §3, §4, §5.1."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest

from ssh3.errors import NeedMore, ProtocolError
from ssh3.messages import (
    CHANNEL_SIGNAL,
    ChannelData,
    ChannelExtendedData,
    ChannelHeader,
    ChannelHeaderParser,
    ChannelOpenConfirmation,
    ChannelOpenFailure,
    ChannelRequest,
    ExecRequest,
    ExitSignalRequest,
    ExitStatusRequest,
    Message,
    MessageParser,
    PtyRequest,
    ShellRequest,
    SignalRequest,
    SubsystemRequest,
    WindowChangeRequest,
    X11Request,
    decode_datagram,
    encode_datagram,
    parse_header_after_signal,
    parse_message,
    register_request,
    registered_request_types,
)
from ssh3.wire import encode_string, encode_varint


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", "").replace("|", ""))


# (message, reference bytes) from §3.7, §4.2, §4.3 and Appendix A.
MESSAGE_VECTORS: list[tuple[Message, str]] = [
    (ChannelOpenConfirmation(30000), "405b 80007530"),
    (
        ChannelOpenFailure(3, "unknown channel type", ""),
        "405c0314756e6b6e6f776e206368616e6e656c207479706500",
    ),
    (ChannelOpenFailure(2, "connect failed", "en"), "405c020e636f6e6e656374206661696c656402656e"),
    (ChannelData(b"hello, world!"), "405e 0d 68656c6c6f2c20776f726c6421"),
    (ChannelData(b""), "405e00"),
    (ChannelData(b"\xab" * 64), "405e 4040" + "ab" * 64),
    (ChannelData(b"forward-agent"), "405e 0d 666f72776172642d6167656e74"),
    (ChannelData(b"hi\n"), "405e 03 68690a"),
    (ChannelExtendedData(1, b"oops\n"), "405f 01 05 6f6f70730a"),
    (
        PtyRequest("xterm-256color", 80, 24, 0, 0, b"", want_reply=True),
        "4062077074792d726571010e787465726d2d323536636f6c6f72405018000000",
    ),
    (ShellRequest(want_reply=True), "4062 05 7368656c6c 01"),
    (ExecRequest(b"ls -la", want_reply=True), "4062 04 65786563 01 06 6c73202d6c61"),
    (ExecRequest(b"echo hi", want_reply=True), "4062 04 65786563 01 07 6563686f206869"),
    (SubsystemRequest("sftp", want_reply=True), "4062 09 73756273797374656d 01 04 73667470"),
    (
        WindowChangeRequest(120, 40, 0, 0, want_reply=False),
        "4062 0d 77696e646f772d6368616e6765 00 4078 28 00 00",
    ),
    (SignalRequest("INT"), "4062 06 7369676e616c 00 03 494e54"),
    (ExitStatusRequest(0), "4062 0b 657869742d737461747573 00 00"),
    (ExitStatusRequest(1), "4062 0b 657869742d737461747573 00 01"),
    (ExitStatusRequest(130), "4062 0b 657869742d737461747573 00 4082"),
    (ExitStatusRequest(255), "4062 0b 657869742d737461747573 00 40ff"),
    (
        ExitSignalRequest("KILL", False, "killed", ""),
        "4062 0b 657869742d7369676e616c 00 04 4b494c4c 00 06 6b696c6c6564 00",
    ),
    (
        X11Request(False, "MIT-MAGIC-COOKIE-1", "0123456789abcdef", 0, want_reply=True),
        "4062 07 7831312d726571 01 00 12 4d49542d4d414749432d434f4f4b49452d31"
        " 10 30313233343536373839616263646566 00",
    ),
]

@pytest.mark.parametrize(("msg", "hexstr"), MESSAGE_VECTORS, ids=lambda x: repr(x)[:40])
def test_message_vectors(msg: Message, hexstr: str) -> None:
    wire = h(hexstr)
    assert msg.encode() == wire
    parser = MessageParser()
    assert parser.feed(wire) == [msg]
    assert parser.at_boundary and parser.buffered() == 0
    assert parse_message(wire) == (msg, len(wire))


def test_documented_request_lengths() -> None:
    lengths = {
        PtyRequest("xterm-256color", 80, 24, 0, 0, want_reply=True): 32,
        ShellRequest(True): 9,
        ExecRequest(b"ls -la", True): 15,
        SubsystemRequest("sftp", True): 18,
        WindowChangeRequest(120, 40, 0, 0): 22,
        SignalRequest("INT"): 14,
        ExitSignalRequest("KILL", False, "killed"): 29,
        X11Request(False, "MIT-MAGIC-COOKIE-1", "0123456789abcdef", 0, True): 49,
        ChannelOpenFailure(3, "unknown channel type"): 25,
        ChannelOpenConfirmation(30000): 6,
        ChannelData(b"hello, world!"): 16,
        ChannelExtendedData(1, b"oops\n"): 9,
    }
    for msg, n in lengths.items():
        assert len(msg.encode()) == n, msg


def test_appendix_a_server_direction() -> None:
    wire = h("405b 80007530 405e 03 68690a 4062 0b 657869742d737461747573 00 00")
    assert MessageParser().feed(wire) == [
        ChannelOpenConfirmation(30000),
        ChannelData(b"hi\n"),
        ExitStatusRequest(0),
    ]


def test_want_reply_and_bool_decoding() -> None:
    # want_reply byte 02 is true (any non-zero)
    wire = h("4062 05 7368656c6c 02")
    assert MessageParser().feed(wire) == [ShellRequest(want_reply=True)]
    # x11 single_connection 0x7f is true
    wire = X11Request(True, "p", "c", 3).encode()
    assert wire[-6:] == h("01 01 70 01 63 03")
    tweaked = bytearray(wire)
    tweaked[-6] = 0x7F
    assert MessageParser().feed(bytes(tweaked)) == [X11Request(True, "p", "c", 3)]


def test_non_minimal_varints_in_messages() -> None:
    # message type 94 as a 4-byte varint, length 3 as a 2-byte varint
    assert MessageParser().feed(h("8000005e 4003 616263")) == [ChannelData(b"abc")]
    assert MessageParser().feed(h("405b c000000000007530")) == [ChannelOpenConfirmation(30000)]


def test_text_fields_decode_with_replacement() -> None:
    wire = h("4062 06 7369676e616c 00 02 fffe")
    (msg,) = MessageParser().feed(wire)
    assert isinstance(msg, SignalRequest)
    assert msg.signal_name == "\ufffd\ufffd"
    # opaque exec command keeps its bytes
    wire = ExecRequest(b"\xff\x00cmd").encode()
    assert MessageParser().feed(wire) == [ExecRequest(b"\xff\x00cmd")]
    # non-ASCII text round-trips as UTF-8
    m = ChannelOpenFailure(1, "échec ✓", "fr")
    assert MessageParser().feed(m.encode()) == [m]


def _stream(msgs: list[Message]) -> bytes:
    return b"".join(m.encode() for m in msgs)


ALL_VECTOR_MESSAGES = [m for m, _ in MESSAGE_VECTORS]


def test_byte_by_byte_equals_all_at_once() -> None:
    wire = _stream(ALL_VECTOR_MESSAGES)
    whole = MessageParser().feed(wire)
    assert whole == ALL_VECTOR_MESSAGES
    p = MessageParser()
    got: list[Message] = []
    for i in range(len(wire)):
        got += p.feed(wire[i : i + 1])
        # never more buffered than the unfinished message
        assert p.buffered() <= max(len(m.encode()) for m in ALL_VECTOR_MESSAGES)
    assert got == whole
    assert p.at_boundary


def test_truncated_message_stays_partial() -> None:
    for msg in ALL_VECTOR_MESSAGES:
        wire = msg.encode()
        for cut in range(1, len(wire)):
            p = MessageParser()
            assert p.feed(wire[:cut]) == []
            assert not p.at_boundary
            assert p.buffered() == cut
            with pytest.raises(ProtocolError, match="stream ended inside a message"):
                p.eof()
            assert p.feed(wire[cut:]) == [msg]
            assert p.at_boundary
            p.eof()
        with pytest.raises(NeedMore):
            parse_message(wire[:-1])


def test_empty_feed() -> None:
    p = MessageParser()
    assert p.feed(b"") == []
    assert p.at_boundary


def test_oversized_strings() -> None:
    p = MessageParser(max_data_size=1000)
    # only type + length of a Data message: rejected before the body arrives
    with pytest.raises(ProtocolError, match="string length 1001 exceeds limit 1000"):
        p.feed(h("405e") + encode_varint(1001))
    p = MessageParser()
    with pytest.raises(ProtocolError, match="string length 5000000 exceeds limit 1048576"):
        p.feed(h("405f 01") + encode_varint(5_000_000))
    # limit exactly reached is fine
    p = MessageParser(max_data_size=1000)
    assert p.feed(ChannelData(b"x" * 1000).encode()) == [ChannelData(b"x" * 1000)]
    # request fields obey max_message_size
    p = MessageParser(max_message_size=10)
    with pytest.raises(ProtocolError, match="exceeds limit 10"):
        p.feed(ExecRequest(b"x" * 11).encode())
    # request type names are capped too
    p = MessageParser()
    with pytest.raises(ProtocolError, match="channel request type length"):
        p.feed(h("4062") + encode_varint(100_000))


@pytest.mark.parametrize("mtype", [93, 96, 97, 99, 100, 1, 90, 0])
def test_unknown_message_type(mtype: int) -> None:
    p = MessageParser()
    with pytest.raises(ProtocolError, match=f"^unknown message type {mtype}$"):
        p.feed(encode_varint(mtype))


def test_unknown_request_type() -> None:
    p = MessageParser()
    # `env` is known now (extension EXT_ENV); auth-agent-req@openssh.com is not
    wire = h("4062") + encode_string(b"auth-agent-req@openssh.com") + b"\x00"
    with pytest.raises(ProtocolError) as exc:
        p.feed(wire)
    assert str(exc.value) == "unknown channel request type 'auth-agent-req@openssh.com'"
    # forward-port (§4.4) is not registered either
    with pytest.raises(ProtocolError, match="'forward-port'"):
        MessageParser().feed(h("4062 0c") + b"forward-port" + h("01 0401 0000 1f90 0000"))


def test_parser_dead_after_error_and_keeps_earlier_messages() -> None:
    p = MessageParser()
    good = ExitStatusRequest(3).encode()
    with pytest.raises(ProtocolError) as exc:
        p.feed(good + h("405d"))
    assert exc.value.messages == [ExitStatusRequest(3)]
    with pytest.raises(ProtocolError, match="unknown message type 93"):
        p.feed(good)
    with pytest.raises(ProtocolError, match="unknown message type 93"):
        p.eof()


def _random_message(rng: random.Random) -> Message:
    def text(n: int = 20) -> str:
        return "".join(rng.choice("abcdefé✓-_ ") for _ in range(rng.randrange(n)))

    def blob(n: int) -> bytes:
        return rng.randbytes(rng.randrange(n))

    def num() -> int:
        return rng.choice([0, 1, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, (1 << 62) - 1,
                           rng.randrange(1 << 62)])

    wr = rng.random() < 0.5
    choices = [
        lambda: ChannelOpenConfirmation(num()),
        lambda: ChannelOpenFailure(num(), text(), text(5)),
        lambda: ChannelData(blob(rng.choice([2, 70, 20000]))),
        lambda: ChannelExtendedData(num(), blob(300)),
        lambda: PtyRequest(text(), num(), num(), num(), num(), blob(50), wr),
        lambda: X11Request(rng.random() < 0.5, text(), text(), num(), wr),
        lambda: ShellRequest(wr),
        lambda: ExecRequest(blob(200), wr),
        lambda: SubsystemRequest(text(), wr),
        lambda: WindowChangeRequest(num(), num(), num(), num(), wr),
        lambda: SignalRequest(text(), wr),
        lambda: ExitStatusRequest(num(), wr),
        lambda: ExitSignalRequest(text(), rng.random() < 0.5, text(), text(), wr),
    ]
    return rng.choice(choices)()


def test_random_round_trip() -> None:
    rng = random.Random(20240904)
    msgs = [_random_message(rng) for _ in range(2000)]
    wire = _stream(msgs)
    assert MessageParser().feed(wire) == msgs
    # random chunking
    p = MessageParser()
    got: list[Message] = []
    pos = 0
    while pos < len(wire):
        n = rng.choice([1, 2, 3, 7, 100, 1200, 5000, 40000])
        got += p.feed(wire[pos : pos + n])
        pos += n
    assert got == msgs
    assert p.at_boundary
    # bytearray / memoryview input
    p = MessageParser()
    assert p.feed(bytearray(wire[:50000])) + p.feed(memoryview(wire)[50000:]) == msgs


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        ExitStatusRequest(-1).encode()  # Go panics here (Q6); we refuse to encode it
    with pytest.raises(ValueError):
        ChannelOpenConfirmation(1 << 62).encode()


def test_registry_extension() -> None:
    assert "xenv" not in registered_request_types()
    assert set(registered_request_types()) >= {
        "pty-req", "x11-req", "shell", "exec", "subsystem", "window-change", "signal",
        "exit-status", "exit-signal", "env",
    }

    @dataclass(frozen=True)
    class XEnvRequest(ChannelRequest):
        request_type: ClassVar[str] = "xenv"
        name: str
        value: bytes
        want_reply: bool = False

    msg = XEnvRequest("LANG", b"C.UTF-8")
    wire = msg.encode()
    assert wire == h("4062 04 78656e76 00 04 4c414e47 07 432e5554462d38")
    # per-parser extension, leaves the global registry alone
    assert MessageParser(extra_request_types=[XEnvRequest]).feed(wire) == [msg]
    with pytest.raises(ProtocolError, match="unknown channel request type 'xenv'"):
        MessageParser().feed(wire)

    @dataclass(frozen=True)
    class PortRequest(ChannelRequest):
        request_type: ClassVar[str] = "x-test-port@ssh3-py"
        port: int
        want_reply: bool = False

        def encode_body(self) -> bytes:
            return self.port.to_bytes(2, "big")

        @classmethod
        def decode_body(cls, reader, want_reply, max_len):  # type: ignore[no-untyped-def]
            return cls(reader.read_u16(), want_reply)

    assert register_request(PortRequest) is PortRequest
    try:
        msg2 = PortRequest(8080, True)
        wire2 = msg2.encode()
        assert wire2.endswith(h("01 1f90"))
        p = MessageParser()
        assert p.feed(wire2[:-1]) == []
        assert p.feed(wire2[-1:]) == [msg2]
        with pytest.raises(ValueError):
            register_request(type("Dup", (PortRequest,), {}))
    finally:
        from ssh3 import messages

        messages._REQUEST_TYPES.pop(PortRequest.request_type)

    with pytest.raises(ValueError, match="already registered"):
        register_request(type("Shell2", (ShellRequest,), {}))


# ---------------------------------------------------------------------------
# Channel headers (§3.2, §3.3)
# ---------------------------------------------------------------------------

SIGNAL = "c0000000af3627e6"

HEADER_VECTORS: list[tuple[ChannelHeader, str, bool]] = [
    (ChannelHeader(0, "session", 30000), "00 07 73657373696f6e 80007530", False),
    (ChannelHeader(4, "session", 30000), "04 07 73657373696f6e 80007530", False),
    (
        ChannelHeader(0, "agent-connection", 30000),
        "00 10 6167656e742d636f6e6e656374696f6e 80007530",
        False,
    ),
    (
        ChannelHeader(0, "direct-udp", 30000, ("127.0.0.1", 53)),
        "00 0a 6469726563742d756470 80007530 04 7f000001 0035",
        False,
    ),
    (
        ChannelHeader(0, "direct-tcp", 30000, ("127.0.0.1", 8080)),
        "00 0a 6469726563742d746370 80007530 04 7f000001 1f90",
        False,
    ),
    (
        ChannelHeader(0, "direct-tcp", 30000, ("127.0.0.1", 8080)),
        "00 0a 6469726563742d746370 80007530 06 00000000000000000000ffff7f000001 1f90",
        True,
    ),
    (
        ChannelHeader(0, "direct-udp", 30000, ("::1", 53)),
        "00 0a 6469726563742d756470 80007530 06 00000000000000000000000000000001 0035",
        False,
    ),
]


def test_signal_constant() -> None:
    assert CHANNEL_SIGNAL == 0xAF3627E6
    assert encode_varint(CHANNEL_SIGNAL).hex() == SIGNAL


@pytest.mark.parametrize(("header", "hexstr", "mapped"), HEADER_VECTORS)
def test_header_vectors(header: ChannelHeader, hexstr: str, mapped: bool) -> None:
    body = h(hexstr)
    assert header.encode(ipv4_mapped=mapped) == h(SIGNAL) + body
    assert parse_header_after_signal(body) == (header, len(body))
    first = ChannelData(b"x").encode()
    # whole header + a first message in one chunk
    p = ChannelHeaderParser()
    assert p.feed(body + first) == header
    assert p.header == header and p.rest == first
    # byte by byte
    p = ChannelHeaderParser()
    for i in range(len(body) - 1):
        assert p.feed(body[i : i + 1]) is None
    assert p.feed(body[-1:]) == header
    assert p.rest == b""
    with pytest.raises(RuntimeError):
        p.feed(b"more")
    # with the signal still in front
    p = ChannelHeaderParser(expect_signal=True)
    assert p.feed(h(SIGNAL)[:3]) is None
    assert p.feed(h(SIGNAL)[3:] + body) == header


def test_header_encode_variants() -> None:
    assert ChannelHeader(8, "direct-tcp", 1200, ("2001:db8::5", 22)).encode() == h(
        SIGNAL + "08 0a 6469726563742d746370 44b0 06 20010db8000000000000000000000005 0016"
    )
    # ipv4_mapped has no effect on IPv6 targets or non-forwarding channels
    hdr = ChannelHeader(0, "direct-udp", 30000, ("::1", 53))
    assert hdr.encode(ipv4_mapped=True) == hdr.encode()
    assert ChannelHeader(0, "session", 30000).encode(ipv4_mapped=True) == h(
        SIGNAL + "00 07 73657373696f6e 80007530"
    )
    with pytest.raises(ValueError):
        ChannelHeader(0, "direct-tcp", 30000).encode()
    with pytest.raises(ValueError):
        ChannelHeader(0, "session", 30000, ("127.0.0.1", 1)).encode()
    with pytest.raises(ValueError):
        ChannelHeader(0, "direct-tcp", 30000, ("example.org", 1)).encode()
    with pytest.raises(ValueError):
        ChannelHeader(0, "direct-tcp", 30000, ("127.0.0.1", 70000)).encode()


def test_header_invalid_address_family() -> None:
    body = h("00 0a 6469726563742d746370 80007530 05 7f000001 1f90")
    p = ChannelHeaderParser()
    with pytest.raises(ProtocolError, match="^invalid address family 5$"):
        p.feed(body)
    with pytest.raises(ProtocolError, match="invalid address family 5"):
        p.feed(b"")
    with pytest.raises(ProtocolError, match="invalid address family 0"):
        parse_header_after_signal(h("00 0a 6469726563742d756470 80007530 00"))


def test_header_limits_and_truncation() -> None:
    p = ChannelHeaderParser()
    with pytest.raises(ProtocolError, match="channel type length 65 exceeds limit 64"):
        p.feed(h("00") + encode_varint(65))
    # 64 bytes is allowed; unknown types are the caller's business
    name = "x" * 64
    body = h("00") + encode_string(name.encode()) + h("00")
    assert parse_header_after_signal(body)[0] == ChannelHeader(0, name, 0)
    # truncated direct-tcp header waits for the port
    full = h("00 0a 6469726563742d746370 80007530 04 7f000001 1f90")
    with pytest.raises(NeedMore):
        parse_header_after_signal(full[:-1])
    p = ChannelHeaderParser(expect_signal=True)
    with pytest.raises(ProtocolError, match="not an SSH3 channel"):
        p.feed(h("41 04"))


def test_header_non_utf8_type_does_not_raise() -> None:
    body = h("00 02 fffe 00")
    hdr, n = parse_header_after_signal(body)
    assert hdr.channel_type == "\ufffd\ufffd" and n == len(body)


# ---------------------------------------------------------------------------
# Datagrams (§5.1)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cs", "ch", "payload", "hexstr"),
    [
        (0, 4, b"ping", "00 04 70696e67"),
        (4, 101, b"ping", "04 4065 70696e67"),
        (0, 4, b"", "00 04"),
    ],
)
def test_datagram_vectors(cs: int, ch: int, payload: bytes, hexstr: str) -> None:
    wire = h(hexstr)
    assert encode_datagram(cs, ch, payload) == wire
    assert decode_datagram(wire) == (cs, ch, payload)


def test_datagram_truncated() -> None:
    for bad in (b"", h("00"), h("04 40"), h("80 00 00")):
        with pytest.raises(ProtocolError, match="truncated datagram"):
            decode_datagram(bad)
    assert decode_datagram(memoryview(h("c000000000000004 8000000c 01"))) == (4, 12, b"\x01")


# ---------------------------------------------------------------------------
# Throughput
# ---------------------------------------------------------------------------


def test_streaming_throughput() -> None:
    payload = bytes(range(256)) * 117 + b"abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklm"
    assert len(payload) > 29990
    wire = ChannelData(payload[:30000]).encode() * 1000
    chunks = [wire[i : i + 1200] for i in range(0, len(wire), 1200)]
    p = MessageParser()
    start = time.perf_counter()
    count = 0
    for c in chunks:
        count += len(p.feed(c))
    elapsed = time.perf_counter() - start
    assert count == 1000 and p.at_boundary
    assert elapsed < 0.5, f"{elapsed:.3f}s for 30 MB"
