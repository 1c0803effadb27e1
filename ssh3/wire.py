"""QUIC varints (RFC 9000 §16) and the SSH3 encoding primitives (PROTOCOL.md §0.3).

SSH3 strings are a varint length followed by the bytes (not RFC 4251's u32 length),
bools are one byte, u16 is big-endian and every other integer is a varint.
"""

from __future__ import annotations

from .errors import NeedMore, ProtocolError

MAX_VARINT = (1 << 62) - 1

# Masks removing the 2-bit length prefix, indexed by encoded length.
_VARINT_MASK = {2: 0x3FFF, 4: 0x3FFF_FFFF, 8: 0x3FFF_FFFF_FFFF_FFFF}

Buffer = bytes | bytearray | memoryview


def varint_len(n: int) -> int:
    """Length in bytes of the shortest varint encoding of `n`."""
    if n < 0 or n > MAX_VARINT:
        raise ValueError(f"varint value {n} out of range [0, 2**62)")
    if n < 0x40:
        return 1
    if n < 0x4000:
        return 2
    if n < 0x4000_0000:
        return 4
    return 8


def encode_varint(n: int) -> bytes:
    """Shortest varint encoding of `n`, as the reference always emits."""
    if n < 0:
        raise ValueError(f"varint value {n} out of range [0, 2**62)")
    if n < 0x40:
        return bytes((n,))
    if n < 0x4000:
        return (n | 0x4000).to_bytes(2, "big")
    if n < 0x4000_0000:
        return (n | 0x8000_0000).to_bytes(4, "big")
    if n <= MAX_VARINT:
        return (n | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise ValueError(f"varint value {n} out of range [0, 2**62)")


def encode_string(b: Buffer) -> bytes:
    """Varint length followed by the bytes. Text must be encoded by the caller."""
    if isinstance(b, str):
        # A str would silently get a character count as its length otherwise.
        raise TypeError("encode_string takes bytes; encode text first")
    return encode_varint(len(b)) + bytes(b)


def encode_bool(v: bool) -> bytes:
    return b"\x01" if v else b"\x00"


def encode_u16(n: int) -> bytes:
    if not 0 <= n <= 0xFFFF:
        raise ValueError(f"u16 value {n} out of range [0, 65535]")
    return n.to_bytes(2, "big")


class Reader:
    """Cursor over a buffer for decoding SSH3 primitives.

    Every read either succeeds and advances, or raises `NeedMore` (input too short)
    or `ProtocolError` without moving the position, so an incremental caller can
    simply retry the whole message once more bytes have arrived.
    """

    __slots__ = ("_buf", "_pos", "_end")

    def __init__(self, data: Buffer, pos: int = 0) -> None:
        if isinstance(data, memoryview) and (data.ndim != 1 or data.itemsize != 1):
            data = data.cast("B")
        self._buf = data
        self._pos = pos
        self._end = len(data)

    @property
    def pos(self) -> int:
        return self._pos

    @pos.setter
    def pos(self, value: int) -> None:
        # Lets a caller rewind to a message start after NeedMore.
        if not 0 <= value <= self._end:
            raise ValueError(f"position {value} outside buffer of {self._end} bytes")
        self._pos = value

    def remaining(self) -> int:
        return self._end - self._pos

    def read_varint(self) -> int:
        pos = self._pos
        if pos >= self._end:
            raise NeedMore(pos + 1)
        first = self._buf[pos]
        length = 1 << (first >> 6)
        if length == 1:
            self._pos = pos + 1
            return first
        end = pos + length
        if end > self._end:
            raise NeedMore(end)
        # Non-minimal encodings are accepted on purpose: the reference accepts them.
        value = int.from_bytes(self._buf[pos:end], "big") & _VARINT_MASK[length]
        self._pos = end
        return value

    def read_bytes(self, n: int) -> bytes:
        if n < 0:
            raise ValueError(f"negative read length {n}")
        pos = self._pos
        end = pos + n
        if end > self._end:
            raise NeedMore(end)
        self._pos = end
        return bytes(self._buf[pos:end])

    def read_string(self, max_len: int, what: str = "string") -> bytes:
        """Read a varint-length-prefixed string of at most `max_len` bytes.

        The length is checked before waiting for the body, so a peer cannot make us
        buffer an arbitrarily large string by announcing it.
        """
        start = self._pos
        n = self.read_varint()
        if n > max_len:
            self._pos = start
            raise ProtocolError(f"{what} length {n} exceeds limit {max_len}")
        body = self._pos
        end = body + n
        if end > self._end:
            self._pos = start
            raise NeedMore(end)
        self._pos = end
        return bytes(self._buf[body:end])

    def read_bool(self) -> bool:
        pos = self._pos
        if pos >= self._end:
            raise NeedMore(pos + 1)
        self._pos = pos + 1
        # Any non-zero byte is true, as in the reference (02 parses as true).
        return self._buf[pos] != 0

    def read_u16(self) -> int:
        pos = self._pos
        end = pos + 2
        if end > self._end:
            raise NeedMore(end)
        self._pos = end
        return (self._buf[pos] << 8) | self._buf[pos + 1]


def decode_varint(data: Buffer, pos: int = 0) -> tuple[int, int]:
    """Decode one varint at `pos`; returns (value, position after it). NeedMore if short."""
    r = Reader(data, pos)
    value = r.read_varint()
    return value, r.pos


__all__ = [
    "MAX_VARINT",
    "Reader",
    "decode_varint",
    "encode_bool",
    "encode_string",
    "encode_u16",
    "encode_varint",
    "varint_len",
]
