"""SSH3 channel messages, channel headers and datagram framing (PROTOCOL.md §3, §4, §5.1).

Every message is self-delimiting: a varint message type followed by type-specific
fields; there is no outer length and no channel number (the QUIC stream is the
channel). Only types 91, 92, 94, 95 and 98 exist on the wire; anything else is a
protocol error here (and crashes the reference peer, so we never send them).
"""

from __future__ import annotations

import ipaddress
import typing
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import ClassVar, Self, TypeAlias, TypeVar

from .errors import NeedMore, ProtocolError
from .wire import (
    Buffer,
    Reader,
    encode_bool,
    encode_string,
    encode_u16,
    encode_varint,
)

# Message type numbers keep their SSHv2 values (two-byte varints on the wire).
MSG_CHANNEL_OPEN_CONFIRMATION = 91
MSG_CHANNEL_OPEN_FAILURE = 92
MSG_CHANNEL_DATA = 94
MSG_CHANNEL_EXTENDED_DATA = 95
MSG_CHANNEL_REQUEST = 98

_T_CONFIRM = encode_varint(MSG_CHANNEL_OPEN_CONFIRMATION)
_T_FAILURE = encode_varint(MSG_CHANNEL_OPEN_FAILURE)
_T_DATA = encode_varint(MSG_CHANNEL_DATA)
_T_EXT_DATA = encode_varint(MSG_CHANNEL_EXTENDED_DATA)
_T_REQUEST = encode_varint(MSG_CHANNEL_REQUEST)

EXTENDED_DATA_STDERR = 1

# Request names are short identifiers; a longer one cannot be anything we know, and
# capping it keeps error messages (which quote the name) small.
MAX_REQUEST_TYPE_LEN = 256
# Channel type names in the header (PROTOCOL.md brief: 64 bytes).
MAX_CHANNEL_TYPE_LEN = 64

CHANNEL_SIGNAL = 0xAF3627E6
_SIGNAL_BYTES = encode_varint(CHANNEL_SIGNAL)  # always the 8-byte form c0000000af3627e6

AF_IPV4 = 4
AF_IPV6 = 6
DIRECT_CHANNEL_TYPES = frozenset({"direct-tcp", "direct-udp"})
# our extension (EXT_TCP_BY_NAME, docs/extensions.md): a direct-tcp whose target is
# a name the acceptor resolves; after MaxPacketSize: host string, port u16
TCP_BY_NAME_CHANNEL_TYPE = "direct-tcp-name@ssh3-py"
MAX_TARGET_HOST_LEN = 255  # a DNS name's limit
# our extension (EXT_REVERSE_TCP, docs/extensions.md "Remote forwarding"):
# client -> server: "listen on BindAddress:Port for me"; after MaxPacketSize:
# BindAddress string (1..255 bytes), Port u16
REVERSE_LISTEN_CHANNEL_TYPE = "reverse-tcp-listen@ssh3-py"
# agent forwarding (§3.7): the server opens these channels; a session asks for them
# with a Data message holding exactly FORWARD_AGENT_DATA
AGENT_CHANNEL_TYPE = "agent-connection"
FORWARD_AGENT_DATA = b"forward-agent"
# server -> client: "a connection arrived on listener ListenerID"; after
# MaxPacketSize: ListenerID varint (the listen channel's stream ID), Originator
# address string (1..255 bytes), Originator port u16
REVERSE_TCP_CHANNEL_TYPE = "reverse-tcp@ssh3-py"


def _text(b: bytes) -> str:
    # The wire treats strings as opaque bytes; decoding must never fail on a peer's input.
    return b.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------
# Fixed messages
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelOpenConfirmation:
    max_packet_size: int

    def encode(self) -> bytes:
        return _T_CONFIRM + encode_varint(self.max_packet_size)


@dataclass(frozen=True, slots=True)
class ChannelOpenFailure:
    reason_code: int
    message: str
    language: str = ""

    def encode(self) -> bytes:
        return (
            _T_FAILURE
            + encode_varint(self.reason_code)
            + encode_string(self.message.encode())
            + encode_string(self.language.encode())
        )


@dataclass(frozen=True, slots=True)
class ChannelData:
    data: bytes

    def encode(self) -> bytes:
        return _T_DATA + encode_varint(len(self.data)) + self.data


@dataclass(frozen=True, slots=True)
class ChannelExtendedData:
    data_type: int
    data: bytes

    def encode(self) -> bytes:
        return (
            _T_EXT_DATA
            + encode_varint(self.data_type)
            + encode_varint(len(self.data))
            + self.data
        )


# ---------------------------------------------------------------------------
# Channel requests (type 98)
# ---------------------------------------------------------------------------

# Field codecs derived from dataclass annotations: str -> UTF-8 string, bytes -> opaque
# string, bool -> one byte, int -> varint. Extensions with other layouts override
# encode_body/decode_body instead.
_CODEC_BY_TYPE: dict[object, str] = {str: "s", bytes: "b", bool: "?", int: "v"}
_codec_cache: dict[type, tuple[tuple[str, str], ...]] = {}


def _request_codec(cls: type) -> tuple[tuple[str, str], ...]:
    codec = _codec_cache.get(cls)
    if codec is None:
        hints = typing.get_type_hints(cls)
        items = []
        for f in fields(cls):
            if f.name == "want_reply":
                continue
            kind = _CODEC_BY_TYPE.get(hints[f.name])
            if kind is None:
                raise TypeError(
                    f"{cls.__name__}.{f.name}: no wire codec for {hints[f.name]!r}; "
                    "override encode_body/decode_body"
                )
            items.append((f.name, kind))
        codec = tuple(items)
        _codec_cache[cls] = codec
    return codec


class ChannelRequest:
    """Base of all CHANNEL_REQUEST messages.

    Subclasses are frozen dataclasses whose last field is `want_reply: bool = False`
    (declared in each subclass so that positional construction keeps the wire order)
    and which set the class attribute `request_type`. The body is encoded from the
    other fields in declaration order; see `_CODEC_BY_TYPE`.
    """

    __slots__ = ()
    request_type: ClassVar[str]
    want_reply: bool

    def encode(self) -> bytes:
        return (
            _T_REQUEST
            + encode_string(self.request_type.encode())
            + encode_bool(self.want_reply)
            + self.encode_body()
        )

    def encode_body(self) -> bytes:
        """Fields after want_reply."""
        parts = []
        for name, kind in _request_codec(type(self)):
            value = getattr(self, name)
            if kind == "v":
                parts.append(encode_varint(value))
            elif kind == "s":
                parts.append(encode_string(value.encode()))
            elif kind == "b":
                parts.append(encode_string(value))
            else:
                parts.append(encode_bool(value))
        return b"".join(parts)

    @classmethod
    def decode_body(cls, reader: Reader, want_reply: bool, max_len: int) -> Self:
        """Decode the fields after want_reply; `max_len` caps every string."""
        kwargs: dict[str, object] = {}
        for name, kind in _request_codec(cls):
            if kind == "v":
                kwargs[name] = reader.read_varint()
            elif kind == "s":
                kwargs[name] = _text(reader.read_string(max_len))
            elif kind == "b":
                kwargs[name] = reader.read_string(max_len)
            else:
                kwargs[name] = reader.read_bool()
        return cls(**kwargs, want_reply=want_reply)  # type: ignore[call-arg]


_REQUEST_TYPES: dict[str, type[ChannelRequest]] = {}

R = TypeVar("R", bound=type[ChannelRequest])


def register_request(cls: R) -> R:
    """Class decorator adding a ChannelRequest subclass to the global parse registry."""
    if not (isinstance(cls, type) and issubclass(cls, ChannelRequest)):
        raise TypeError(f"{cls!r} is not a ChannelRequest subclass")
    name = getattr(cls, "request_type", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty request_type class attribute")
    existing = _REQUEST_TYPES.get(name)
    if existing is not None and existing is not cls:
        # Silently replacing a built-in would change how peers' requests parse.
        raise ValueError(f"channel request type {name!r} already registered by {existing!r}")
    _REQUEST_TYPES[name] = cls
    return cls


def registered_request_types() -> dict[str, type[ChannelRequest]]:
    """Snapshot of the global registry (name -> class)."""
    return dict(_REQUEST_TYPES)


@register_request
@dataclass(frozen=True, slots=True)
class PtyRequest(ChannelRequest):
    request_type: ClassVar[str] = "pty-req"
    term: str
    char_width: int
    char_height: int
    pixel_width: int
    pixel_height: int
    modes: bytes = b""
    want_reply: bool = False


@register_request
@dataclass(frozen=True, slots=True)
class X11Request(ChannelRequest):
    request_type: ClassVar[str] = "x11-req"
    single_connection: bool
    auth_protocol: str
    auth_cookie: str
    screen_number: int
    want_reply: bool = False


@register_request
@dataclass(frozen=True, slots=True)
class ShellRequest(ChannelRequest):
    request_type: ClassVar[str] = "shell"
    want_reply: bool = False


@register_request
@dataclass(frozen=True, slots=True)
class ExecRequest(ChannelRequest):
    request_type: ClassVar[str] = "exec"
    command: bytes  # opaque: a shell command line need not be UTF-8
    want_reply: bool = False


@register_request
@dataclass(frozen=True, slots=True)
class SubsystemRequest(ChannelRequest):
    request_type: ClassVar[str] = "subsystem"
    name: str
    want_reply: bool = False


@register_request
@dataclass(frozen=True, slots=True)
class WindowChangeRequest(ChannelRequest):
    request_type: ClassVar[str] = "window-change"
    char_width: int
    char_height: int
    pixel_width: int
    pixel_height: int
    want_reply: bool = False


@register_request
@dataclass(frozen=True, slots=True)
class SignalRequest(ChannelRequest):
    request_type: ClassVar[str] = "signal"
    signal_name: str  # without the "SIG" prefix, e.g. "INT"
    want_reply: bool = False


@register_request
@dataclass(frozen=True, slots=True)
class ExitStatusRequest(ChannelRequest):
    request_type: ClassVar[str] = "exit-status"
    exit_status: int
    want_reply: bool = False


@register_request
@dataclass(frozen=True, slots=True)
class ExitSignalRequest(ChannelRequest):
    request_type: ClassVar[str] = "exit-signal"
    signal_name: str
    core_dumped: bool
    error_message: str
    language: str = ""
    want_reply: bool = False


@register_request
@dataclass(frozen=True, slots=True)
class ReverseTcpBoundRequest(ChannelRequest):
    """Our extension (EXT_REVERSE_TCP): on a reverse-tcp-listen@ssh3-py channel, right
    after ChannelOpenConfirmation, the port the server's listener is bound to (the
    allocated one when port 0 was asked for). Never sent to a reference peer."""

    request_type: ClassVar[str] = "reverse-tcp-bound@ssh3-py"
    port: int
    want_reply: bool = False


@register_request
@dataclass(frozen=True, slots=True)
class EnvRequest(ChannelRequest):
    """`env` (extension EXT_ENV, docs/extensions.md): one environment variable for
    the session's process, sent before pty-req/shell/exec. Never sent to a peer
    that did not announce the bit: the reference ends the conversation (Q2)."""

    request_type: ClassVar[str] = "env"
    name: str
    value: bytes  # opaque, like an exec command line: need not be UTF-8
    want_reply: bool = False


Message: TypeAlias = (
    ChannelOpenConfirmation
    | ChannelOpenFailure
    | ChannelData
    | ChannelExtendedData
    | ChannelRequest
)


# ---------------------------------------------------------------------------
# Incremental message parser
# ---------------------------------------------------------------------------


class MessageParser:
    """Incremental, bounded parser for one direction of a channel stream.

    `feed` returns every complete message and keeps only the unfinished tail. Memory
    is bounded because each string length is checked against its limit as soon as the
    length varint is read, before the body is awaited. Once the required size of the
    pending message is known, smaller chunks are just appended without re-parsing, so
    large Data messages stream in linear time.
    """

    def __init__(
        self,
        max_message_size: int = 1 << 20,
        max_data_size: int = 1 << 20,
        *,
        extra_request_types: Iterable[type[ChannelRequest]] = (),
    ) -> None:
        self.max_message_size = max_message_size
        self.max_data_size = max_data_size
        self._extra: dict[str, type[ChannelRequest]] = {
            cls.request_type: cls for cls in extra_request_types
        }
        self._buf = bytearray()
        # Buffer length below which parsing the pending message cannot succeed.
        self._need = 0
        self._error: ProtocolError | None = None

    def buffered(self) -> int:
        return len(self._buf)

    @property
    def at_boundary(self) -> bool:
        return not self._buf

    def feed(self, data: Buffer) -> list[Message]:
        if self._error is not None:
            raise ProtocolError(str(self._error))
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return []
        out: list[Message] = []
        pos = 0
        need = 0
        try:
            # memoryview so that Data payloads are copied once, straight into bytes.
            with memoryview(buf) as mv:
                reader = Reader(mv)
                end = len(buf)
                while pos < end:
                    try:
                        msg = self._parse_one(reader)
                    except NeedMore as exc:
                        need = exc.needed
                        break
                    out.append(msg)
                    pos = reader.pos
                del reader
        except ProtocolError as exc:
            self._error = exc
            self._buf = bytearray()
            exc.messages = list(out)
            raise
        # bytearray deletes from the front in O(1) (it moves its start pointer), so
        # compacting after every feed is cheap and keeps indexes relative to 0.
        if pos:
            del buf[:pos]
        self._need = need - pos if need else 0
        return out

    def eof(self) -> None:
        """Call at end of stream: raise if it ended inside a message."""
        if self._error is not None:
            raise ProtocolError(str(self._error))
        if self._buf:
            raise ProtocolError(
                f"stream ended inside a message ({len(self._buf)} bytes buffered)"
            )

    def _lookup_request(self, name: str) -> type[ChannelRequest] | None:
        cls = self._extra.get(name)
        if cls is None:
            cls = _REQUEST_TYPES.get(name)
        return cls

    def _parse_one(self, r: Reader) -> Message:
        start = r.pos
        try:
            mtype = r.read_varint()
            if mtype == MSG_CHANNEL_DATA:
                return ChannelData(r.read_string(self.max_data_size))
            if mtype == MSG_CHANNEL_EXTENDED_DATA:
                data_type = r.read_varint()
                return ChannelExtendedData(data_type, r.read_string(self.max_data_size))
            if mtype == MSG_CHANNEL_REQUEST:
                name = _text(
                    r.read_string(MAX_REQUEST_TYPE_LEN, what="channel request type")
                )
                cls = self._lookup_request(name)
                if cls is None:
                    raise ProtocolError(f"unknown channel request type {name!r}")
                want_reply = r.read_bool()
                try:
                    return cls.decode_body(r, want_reply, self.max_message_size)
                except ValueError as exc:
                    # An extension's field validation rejecting the peer's values.
                    raise ProtocolError(f"invalid {name!r} channel request: {exc}") from exc
            if mtype == MSG_CHANNEL_OPEN_CONFIRMATION:
                return ChannelOpenConfirmation(r.read_varint())
            if mtype == MSG_CHANNEL_OPEN_FAILURE:
                code = r.read_varint()
                message = _text(r.read_string(self.max_message_size))
                language = _text(r.read_string(self.max_message_size))
                return ChannelOpenFailure(code, message, language)
            raise ProtocolError(f"unknown message type {mtype}")
        except NeedMore:
            # Retry from the message start once more bytes arrive.
            r.pos = start
            raise


def parse_message(data: Buffer, **limits: int) -> tuple[Message, int]:
    """Decode one message from the start of `data`: (message, bytes consumed).

    Raises NeedMore if `data` holds no complete message. `limits` are passed to
    MessageParser (max_message_size, max_data_size).
    """
    parser = MessageParser(**limits)
    r = Reader(data)
    msg = parser._parse_one(r)
    return msg, r.pos


# ---------------------------------------------------------------------------
# Channel header (opener -> acceptor, start of the stream)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelHeader:
    control_stream_id: int
    channel_type: str
    max_packet_size: int
    # (IP literal, port) for direct-tcp / direct-udp; (host, port) for our
    # direct-tcp-name and reverse-tcp types; None for every other type.
    address: tuple[str, int] | None = None
    # reverse-tcp@ssh3-py only: the stream ID of the listen channel it belongs to
    listener_id: int | None = None

    def encode(self, *, ipv4_mapped: bool = False) -> bytes:
        """Header bytes including the 8-byte signal.

        `ipv4_mapped` sends an IPv4 target as AF 6 ::ffff:a.b.c.d, the form the Go CLI
        uses; the Go server accepts both.
        """
        out = (
            _SIGNAL_BYTES
            + encode_varint(self.control_stream_id)
            + encode_string(self.channel_type.encode())
            + encode_varint(self.max_packet_size)
        )
        if self.channel_type in DIRECT_CHANNEL_TYPES:
            if self.address is None:
                raise ValueError(f"{self.channel_type} header needs an address")
            host, port = self.address
            ip = ipaddress.ip_address(host)
            if isinstance(ip, ipaddress.IPv4Address):
                if ipv4_mapped:
                    mapped = ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)
                    out += encode_varint(AF_IPV6) + mapped.packed
                else:
                    out += encode_varint(AF_IPV4) + ip.packed
            else:
                out += encode_varint(AF_IPV6) + ip.packed
            out += encode_u16(port)
        elif self.channel_type in _NAMED_ADDRESS_TYPES:
            if self.address is None:
                raise ValueError(f"{self.channel_type} header needs an address")
            if self.channel_type == REVERSE_TCP_CHANNEL_TYPE:
                if self.listener_id is None:
                    raise ValueError(f"{self.channel_type} header needs a listener ID")
                out += encode_varint(self.listener_id)
            host, port = self.address
            name = host.encode()
            if not 0 < len(name) <= MAX_TARGET_HOST_LEN:
                raise ValueError(f"host name of {len(name)} bytes")
            out += encode_string(name) + encode_u16(port)
        elif self.address is not None:
            raise ValueError(f"channel type {self.channel_type!r} carries no address")
        return out


# our types whose address is a string + u16 (the field's name for error messages)
_NAMED_ADDRESS_TYPES = {TCP_BY_NAME_CHANNEL_TYPE: "target host",
                        REVERSE_LISTEN_CHANNEL_TYPE: "bind address",
                        REVERSE_TCP_CHANNEL_TYPE: "originator address"}


def _read_address(r: Reader) -> tuple[str, int]:
    family = r.read_varint()
    if family == AF_IPV4:
        host = str(ipaddress.IPv4Address(r.read_bytes(4)))
    elif family == AF_IPV6:
        ip6 = ipaddress.IPv6Address(r.read_bytes(16))
        # The Go CLI sends IPv4 targets v4-mapped; the server must connect over IPv4.
        host = str(ip6.ipv4_mapped) if ip6.ipv4_mapped is not None else str(ip6)
    else:
        raise ProtocolError(f"invalid address family {family}")
    return host, r.read_u16()


def _read_header_fields(r: Reader) -> ChannelHeader:
    control_stream_id = r.read_varint()
    channel_type = _text(r.read_string(MAX_CHANNEL_TYPE_LEN, what="channel type"))
    max_packet_size = r.read_varint()
    address = _read_address(r) if channel_type in DIRECT_CHANNEL_TYPES else None
    listener_id = None
    if channel_type in _NAMED_ADDRESS_TYPES:
        if channel_type == REVERSE_TCP_CHANNEL_TYPE:
            listener_id = r.read_varint()
        what = _NAMED_ADDRESS_TYPES[channel_type]
        host = _text(r.read_string(MAX_TARGET_HOST_LEN, what=what))
        if not host:
            raise ProtocolError(f"empty {what}")
        address = (host, r.read_u16())
    return ChannelHeader(control_stream_id, channel_type, max_packet_size, address,
                         listener_id)


def parse_header_after_signal(data: Buffer) -> tuple[ChannelHeader, int]:
    """Parse a channel header whose signal varint was already stripped.

    Returns (header, bytes consumed); raises NeedMore if incomplete.
    """
    r = Reader(data)
    header = _read_header_fields(r)
    return header, r.pos


class ChannelHeaderParser:
    """Incremental channel header parser.

    By default it starts after the signal varint, because the connection layer strips
    the signal when it demultiplexes streams. With `expect_signal=True` it reads and
    checks the signal itself. The buffer stays small: every header field is bounded.
    """

    def __init__(self, *, expect_signal: bool = False) -> None:
        self._expect_signal = expect_signal
        self._buf = bytearray()
        self._error: ProtocolError | None = None
        self.header: ChannelHeader | None = None
        self.rest: bytes = b""

    def feed(self, data: Buffer) -> ChannelHeader | None:
        if self._error is not None:
            raise ProtocolError(str(self._error))
        if self.header is not None:
            raise RuntimeError("channel header already complete; parse `rest` as messages")
        self._buf += data
        r = Reader(self._buf)
        try:
            if self._expect_signal:
                signal = r.read_varint()
                if signal != CHANNEL_SIGNAL:
                    raise ProtocolError(f"not an SSH3 channel: stream type {signal:#x}")
            header = _read_header_fields(r)
        except NeedMore:
            return None
        except ProtocolError as exc:
            self._error = exc
            self._buf = bytearray()
            raise
        self.header = header
        self.rest = bytes(self._buf[r.pos :])
        self._buf = bytearray()
        return header


# ---------------------------------------------------------------------------
# Datagrams (§5.1): raw QUIC DATAGRAM payload, full stream IDs, not RFC 9297
# ---------------------------------------------------------------------------


def encode_datagram(control_stream_id: int, channel_id: int, payload: Buffer) -> bytes:
    return encode_varint(control_stream_id) + encode_varint(channel_id) + bytes(payload)


def decode_datagram(data: Buffer) -> tuple[int, int, bytes]:
    """Split a datagram into (control stream ID, channel ID, payload)."""
    r = Reader(data)
    try:
        control_stream_id = r.read_varint()
        channel_id = r.read_varint()
    except NeedMore:
        raise ProtocolError(
            f"truncated datagram ({len(data)} bytes): missing stream IDs"
        ) from None
    return control_stream_id, channel_id, r.read_bytes(r.remaining())


__all__ = [
    "AF_IPV4",
    "AF_IPV6",
    "CHANNEL_SIGNAL",
    "DIRECT_CHANNEL_TYPES",
    "EXTENDED_DATA_STDERR",
    "MSG_CHANNEL_DATA",
    "MSG_CHANNEL_EXTENDED_DATA",
    "MSG_CHANNEL_OPEN_CONFIRMATION",
    "MSG_CHANNEL_OPEN_FAILURE",
    "MSG_CHANNEL_REQUEST",
    "ChannelData",
    "ChannelExtendedData",
    "ChannelHeader",
    "ChannelHeaderParser",
    "ChannelOpenConfirmation",
    "ChannelOpenFailure",
    "ChannelRequest",
    "ExecRequest",
    "EnvRequest",
    "ExitSignalRequest",
    "ExitStatusRequest",
    "Message",
    "MessageParser",
    "PtyRequest",
    "REVERSE_LISTEN_CHANNEL_TYPE",
    "REVERSE_TCP_CHANNEL_TYPE",
    "ReverseTcpBoundRequest",
    "ShellRequest",
    "SignalRequest",
    "SubsystemRequest",
    "WindowChangeRequest",
    "X11Request",
    "decode_datagram",
    "encode_datagram",
    "parse_header_after_signal",
    "parse_message",
    "register_request",
    "registered_request_types",
]
