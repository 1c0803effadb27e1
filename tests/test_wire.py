"""Varints and SSH3 primitives against PROTOCOL.md §0.3."""

from __future__ import annotations

import pytest

from ssh3.errors import NeedMore, ProtocolError
from ssh3.wire import (
    MAX_VARINT,
    Reader,
    decode_varint,
    encode_bool,
    encode_string,
    encode_u16,
    encode_varint,
    varint_len,
)

# §0.3 examples plus the message-type encodings.
VARINT_VECTORS = [
    (0, "00"),
    (63, "3f"),
    (64, "4040"),
    (16383, "7fff"),
    (16384, "80004000"),
    (30000, "80007530"),
    (91, "405b"),
    (92, "405c"),
    (94, "405e"),
    (95, "405f"),
    (98, "4062"),
    (0xAF3627E6, "c0000000af3627e6"),
]


@pytest.mark.parametrize(("value", "hexstr"), VARINT_VECTORS)
def test_varint_vectors(value: int, hexstr: str) -> None:
    assert encode_varint(value).hex() == hexstr
    assert varint_len(value) == len(hexstr) // 2
    r = Reader(bytes.fromhex(hexstr))
    assert r.read_varint() == value
    assert r.remaining() == 0


@pytest.mark.parametrize(
    ("value", "length"),
    [
        (0, 1),
        (63, 1),
        (64, 2),
        (16383, 2),
        (16384, 4),
        ((1 << 30) - 1, 4),
        (1 << 30, 8),
        (MAX_VARINT, 8),
    ],
)
def test_varint_boundaries(value: int, length: int) -> None:
    enc = encode_varint(value)
    assert len(enc) == length == varint_len(value)
    assert decode_varint(enc) == (value, length)


@pytest.mark.parametrize("bad", [-1, 1 << 62, 1 << 64])
def test_varint_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(bad)
    with pytest.raises(ValueError):
        varint_len(bad)


@pytest.mark.parametrize(
    ("hexstr", "value"),
    [
        ("4000", 0),
        ("4005", 5),
        ("8000005e", 94),
        ("c00000000000005e", 94),
        ("c000000000007530", 30000),
    ],
)
def test_non_minimal_varints_accepted(hexstr: str, value: int) -> None:
    r = Reader(bytes.fromhex(hexstr))
    assert r.read_varint() == value
    assert r.pos == len(hexstr) // 2


def test_varint_truncated_does_not_advance() -> None:
    data = bytes.fromhex("aa80007530")[1:4]  # 4-byte varint missing its last byte
    r = Reader(data)
    with pytest.raises(NeedMore) as exc:
        r.read_varint()
    assert exc.value.needed == 4
    assert r.pos == 0
    with pytest.raises(NeedMore):
        Reader(b"").read_varint()


def test_string_bool_u16_encoding() -> None:
    assert encode_string(b"").hex() == "00"
    assert encode_string(b"session").hex() == "0773657373696f6e"
    assert encode_string(b"x" * 64)[:2].hex() == "4040"
    assert encode_string(bytearray(b"ab")) == b"\x02ab"
    with pytest.raises(TypeError):
        encode_string("text")  # type: ignore[arg-type]
    assert encode_bool(True) == b"\x01"
    assert encode_bool(False) == b"\x00"
    assert encode_u16(8080).hex() == "1f90"
    assert encode_u16(53).hex() == "0035"
    for bad in (-1, 65536):
        with pytest.raises(ValueError):
            encode_u16(bad)


def test_read_bool_any_nonzero_is_true() -> None:
    r = Reader(bytes.fromhex("00010280ff"))
    assert [r.read_bool() for _ in range(5)] == [False, True, True, True, True]
    with pytest.raises(NeedMore):
        r.read_bool()
    assert r.pos == 5


def test_read_u16_and_bytes() -> None:
    r = Reader(bytes.fromhex("1f90aabbcc"))
    assert r.read_u16() == 8080
    with pytest.raises(NeedMore) as exc:
        r.read_bytes(4)
    assert exc.value.needed == 6
    assert r.pos == 2
    assert r.read_bytes(3) == b"\xaa\xbb\xcc"
    assert r.read_bytes(0) == b""
    with pytest.raises(NeedMore):
        r.read_u16()
    r2 = Reader(b"\x01")
    with pytest.raises(NeedMore):
        r2.read_u16()
    assert r2.pos == 0


def test_read_string() -> None:
    r = Reader(bytes.fromhex("0d68656c6c6f2c20776f726c6421"))
    assert r.read_string(100) == b"hello, world!"
    assert r.remaining() == 0
    # exactly at the limit is fine
    assert Reader(b"\x03abc").read_string(3) == b"abc"


def test_read_string_truncated_keeps_position() -> None:
    data = encode_string(b"x" * 30000)
    r = Reader(data[:1000])
    with pytest.raises(NeedMore) as exc:
        r.read_string(1 << 20)
    assert exc.value.needed == len(data)
    assert r.pos == 0
    # the length varint itself truncated
    r = Reader(data[:2])
    with pytest.raises(NeedMore):
        r.read_string(1 << 20)
    assert r.pos == 0


def test_read_string_oversized_fails_before_data() -> None:
    # Only the length has arrived: the limit must be enforced without the body.
    r = Reader(encode_varint(5_000_000))
    with pytest.raises(ProtocolError, match="string length 5000000 exceeds limit 1048576"):
        r.read_string(1 << 20)
    assert r.pos == 0
    with pytest.raises(ProtocolError, match="channel type length 65 exceeds limit 64"):
        Reader(encode_varint(65)).read_string(64, what="channel type")


def test_reader_on_memoryview_and_bytearray() -> None:
    raw = bytes.fromhex("405e0568656c6c6f")
    for buf in (bytearray(raw), memoryview(raw), memoryview(bytearray(raw))):
        r = Reader(buf)
        assert r.read_varint() == 94
        out = r.read_string(10)
        assert out == b"hello" and type(out) is bytes


def test_reader_start_position() -> None:
    r = Reader(b"\xff\x05", pos=1)
    assert r.read_varint() == 5
    with pytest.raises(ValueError):
        r.pos = 3
