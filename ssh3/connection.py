"""Sans-I/O SSH3 connection: HTTP/3 plus SSH3 channels over one QUIC connection.

`SSH3Connection.handle_event(quic_event)` takes the QUIC library's events and returns
SSH3 events; the send methods queue bytes on the QUIC connection. No sockets, no
event loop: the asyncio driver (`ssh3.aio`) moves the bytes.

What it separates (PROTOCOL.md §10.2, §10.3):
  * bidirectional streams whose first varint is 0xaf3627e6 are SSH3 channels; they
    never reach the HTTP/3 layer (which would misparse them and kill the connection);
  * every other stream is HTTP/3 and goes to the library's H3Connection;
  * QUIC DATAGRAM frames are SSH3 datagrams (full control stream ID + channel ID),
    not RFC 9297 HTTP datagrams, so they bypass H3Connection in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import exporter
from .backends import Backend
from .errors import NeedMore, ProtocolError
from .messages import (
    CHANNEL_SIGNAL,
    ChannelData,
    ChannelHeader,
    ChannelHeaderParser,
    Message,
    MessageParser,
    decode_datagram,
    encode_datagram,
)
from .wire import Reader

# A private HTTP/3 setting by which our endpoints announce protocol extensions to
# each other before any request is sent. The reference never sends it, so a peer
# that lacks it gets exactly the reference protocol.
SETTING_SSH3_EXTENSIONS = 0x5D7E_A3C1
EXT_CHANNEL_EOF = 0x1  # a FIN on a session channel means stdin EOF, not "tear down"
EXT_WINDOW_CHANGE = 0x2  # window-change is understood
EXT_EXIT_SIGNAL = 0x4  # exit-signal is understood and sent
# `direct-tcp-name@ssh3-py` channels are accepted: the server resolves the target name
EXT_TCP_BY_NAME = 0x8
# remote forwarding (-R): `reverse-tcp-listen@ssh3-py` channels are accepted and the
# server opens `reverse-tcp@ssh3-py` channels back (docs/extensions.md)
EXT_REVERSE_TCP = 0x10
EXT_ENV = 0x20  # the `env` channel request is understood (docs/extensions.md)
OUR_EXTENSIONS = (EXT_CHANNEL_EOF | EXT_WINDOW_CHANGE | EXT_EXIT_SIGNAL | EXT_TCP_BY_NAME
                  | EXT_REVERSE_TCP | EXT_ENV)
# (server) channels sent right behind the CONNECT, before its 200, are held until
# authentication ends (ssh3/aio/early.py); a client announces nothing with it
EXT_EARLY_CHANNELS = 0x40

# H3 error codes used by the reference (PROTOCOL.md §6.6)
H3_NO_ERROR = 0x100
H3_INTERNAL_ERROR = 0x102
H3_FRAME_UNEXPECTED = 0x105
H3_REQUEST_REJECTED = 0x10B  # a channel we do not accept
H3_REQUEST_CANCELLED = 0x10C  # a channel we give up on (reset / stop sending)
H3_REQUEST_INCOMPLETE = 0x10D
STOP_SENDING_TCP_WRITE_FAILED = 42

_SIGNAL_LEN = 8  # 0xaf3627e6 always takes the 8-byte varint form
# headroom for the QUIC short header, DATAGRAM frame type+length and AEAD tag
_DATAGRAM_OVERHEAD = 64


# ---------------------------------------------------------------- events


@dataclass
class Event:
    pass


@dataclass
class HandshakeCompleted(Event):
    conversation_id: bytes


@dataclass
class RequestReceived(Event):
    """Server: an HTTP/3 request (SSH3 CONNECT or anything else) arrived."""

    stream_id: int
    headers: list[tuple[bytes, bytes]]
    stream_ended: bool
    early: bool  # arrived before the handshake completed (0-RTT)


@dataclass
class ResponseReceived(Event):
    """Client: response headers to one of our requests."""

    stream_id: int
    headers: list[tuple[bytes, bytes]]
    stream_ended: bool


@dataclass
class HttpDataReceived(Event):
    stream_id: int
    data: bytes
    stream_ended: bool


@dataclass
class HttpStreamReset(Event):
    stream_id: int
    error_code: int


@dataclass
class ChannelOpened(Event):
    """The peer opened a channel; its header is complete."""

    channel_id: int
    header: ChannelHeader


@dataclass
class MessageReceived(Event):
    channel_id: int
    message: Message
    size: int  # bytes of stream data this message occupied (for flow control credit)


@dataclass
class DataDiscarded(Event):
    """Bytes arrived on a dead channel and were dropped (flow control is credited)."""

    channel_id: int
    size: int


@dataclass
class ChannelEOF(Event):
    channel_id: int


@dataclass
class ChannelReset(Event):
    channel_id: int
    error_code: int


@dataclass
class ChannelStopSending(Event):
    channel_id: int
    error_code: int


@dataclass
class ChannelProtocolError(Event):
    """The peer sent something unparsable on a channel (or a bad header)."""

    channel_id: int
    error: str
    header: ChannelHeader | None = None


@dataclass
class DatagramReceived(Event):
    control_stream_id: int
    channel_id: int
    payload: bytes


@dataclass
class SettingsReceived(Event):
    extensions: int


@dataclass
class ConnectionTerminated(Event):
    error_code: int
    reason: str


# ---------------------------------------------------------------- state


@dataclass
class _ChannelState:
    channel_id: int
    local: bool  # we opened it
    header_parser: ChannelHeaderParser | None
    parser: MessageParser
    header: ChannelHeader | None = None
    dead: bool = False  # protocol error seen: ignore further input
    eof: bool = False
    signal_bytes: int = 0  # stripped before the header parser; credited with it


@dataclass
class _Pending:
    """A peer-initiated bidirectional stream whose first varint is not known yet."""

    data: bytearray = field(default_factory=bytearray)


# Data(""): carries a FIN towards our peers when the library may lose a bare one
EMPTY_DATA_MESSAGE = ChannelData(b"").encode()

_DEAD_PARSER = MessageParser(max_message_size=0, max_data_size=0)


class SSH3Connection:
    """One QUIC connection's SSH3 + HTTP/3 state (client or server)."""

    def __init__(self, quic: Any, backend: Backend, *, is_client: bool,
                 extensions: int = OUR_EXTENSIONS, max_message_size: int = 1 << 20) -> None:
        self._quic = quic
        self._backend = backend
        self.is_client = is_client
        self._max_message_size = max_message_size
        self._h3 = _make_h3(backend, quic, extensions)
        self._h3_streams: set[int] = set()
        self._pending: dict[int, _Pending] = {}
        self._channels: dict[int, _ChannelState] = {}
        self._settings_reported = False
        self.datagrams_dropped = 0
        self.conversation_id: bytes | None = None

    # ------------------------------------------------------------ properties

    @property
    def quic(self) -> Any:
        return self._quic

    @property
    def peer_settings(self) -> dict[int, int] | None:
        return self._h3.received_settings

    @property
    def peer_extensions(self) -> int:
        settings = self._h3.received_settings or {}
        return int(settings.get(SETTING_SSH3_EXTENSIONS, 0))

    def is_channel(self, stream_id: int) -> bool:
        return stream_id in self._channels

    def channel_header(self, channel_id: int) -> ChannelHeader | None:
        state = self._channels.get(channel_id)
        return state.header if state else None

    # ------------------------------------------------------------ input

    def handle_event(self, event: Any) -> list[Event]:
        ev = self._backend.quic_events
        if isinstance(event, ev.StreamDataReceived):
            return self._on_stream_data(event.stream_id, bytes(event.data), event.end_stream)
        if isinstance(event, ev.DatagramFrameReceived):
            return self._on_datagram(bytes(event.data))
        if isinstance(event, ev.StreamReset):
            return self._on_stream_reset(event)
        if isinstance(event, ev.StopSendingReceived):
            return self._on_stop_sending(event)
        if isinstance(event, ev.HandshakeCompleted):
            self.conversation_id = exporter.conversation_id(self._quic)
            out: list[Event] = []
            if self.conversation_id is not None:
                out.append(HandshakeCompleted(self.conversation_id))
            return out + self._h3_handle(event)
        if isinstance(event, ev.ConnectionTerminated):
            return [ConnectionTerminated(event.error_code, event.reason_phrase or "")]
        return self._h3_handle(event)

    def _is_peer_bidi(self, stream_id: int) -> bool:
        if stream_id & 2:
            return False
        peer_initiated = (stream_id & 1) == (0 if not self.is_client else 1)
        return peer_initiated

    def _on_stream_data(self, sid: int, data: bytes, fin: bool) -> list[Event]:
        if sid in self._channels:
            return self._channel_input(self._channels[sid], data, fin)
        if sid in self._h3_streams or not self._is_peer_bidi(sid):
            return self._h3_with_credit(sid, data, fin)
        # a new peer-initiated bidirectional stream: decide by its first varint
        pending = self._pending.setdefault(sid, _Pending())
        pending.data += data
        buf = pending.data
        if not buf:
            if fin:
                del self._pending[sid]
                return self._h3_route(sid, b"", fin)
            return []
        first_len = 1 << (buf[0] >> 6)
        if first_len == _SIGNAL_LEN and len(buf) < _SIGNAL_LEN and not fin:
            return []
        del self._pending[sid]
        is_channel = False
        if len(buf) >= first_len:
            try:
                is_channel = Reader(bytes(buf[:first_len])).read_varint() == CHANNEL_SIGNAL
            except NeedMore:  # pragma: no cover - length checked above
                is_channel = False
        if is_channel:
            state = _ChannelState(sid, local=False, header_parser=ChannelHeaderParser(),
                                  parser=self._new_parser(), signal_bytes=_SIGNAL_LEN)
            self._channels[sid] = state
            return self._channel_input(state, bytes(buf[_SIGNAL_LEN:]), fin)
        if self.is_client:
            # only channels may arrive on server-initiated bidirectional streams
            # (the reference closes the connection with H3_FRAME_UNEXPECTED too)
            self._quic.close(error_code=H3_FRAME_UNEXPECTED,
                             reason_phrase="server-initiated stream is not an SSH3 channel")
            return []
        return self._h3_route(sid, bytes(buf), fin)

    def _h3_route(self, sid: int, data: bytes, fin: bool) -> list[Event]:
        self._h3_streams.add(sid)
        return self._h3_with_credit(sid, data, fin)

    def _h3_with_credit(self, sid: int, data: bytes, fin: bool) -> list[Event]:
        # HTTP/3 consumes its bytes at once: credit them to flow control
        self._credit(sid, len(data))
        return self._h3_handle(self._stream_event(sid, data, fin))

    def _credit(self, sid: int, nbytes: int) -> None:
        """Bytes nobody above this layer will consume: open the window for them."""
        if nbytes:
            self._backend.consume(self._quic, sid, nbytes)

    def _stream_event(self, sid: int, data: bytes, fin: bool) -> Any:
        return self._backend.quic_events.StreamDataReceived(
            data=data, end_stream=fin, stream_id=sid)

    def _new_parser(self) -> MessageParser:
        return MessageParser(max_message_size=self._max_message_size,
                             max_data_size=self._max_message_size)

    def _channel_input(self, state: _ChannelState, data: bytes, fin: bool) -> list[Event]:
        out: list[Event] = []
        cid = state.channel_id
        if state.dead:
            self._credit(cid, len(data))
            return [DataDiscarded(cid, len(data))] if data else out
        if state.header_parser is not None:
            try:
                header = state.header_parser.feed(data)
            except ProtocolError as exc:
                state.dead = True
                return [ChannelProtocolError(cid, f"invalid channel header: {exc}")]
            if header is None:
                if fin:
                    state.dead = True
                    out.append(ChannelProtocolError(cid, "stream ended inside channel header"))
                self._credit(cid, len(data))
                return out
            state.header = header
            rest = state.header_parser.rest
            state.header_parser = None
            out.append(ChannelOpened(cid, header))
            # header bytes are consumed here; credit them (the signal is credited
            # with them: it came in the first chunk)
            self._credit(cid, len(data) - len(rest) + state.signal_bytes)
            state.signal_bytes = 0
            data = rest
        if data:
            try:
                before = state.parser.buffered()
                messages = state.parser.feed(data)
            except ProtocolError as exc:
                state.dead = True
                # what parsed cleanly before the bad bytes still counts (an
                # exit-status just before garbage must not be lost)
                out.extend(MessageReceived(cid, m, 0) for m in (exc.messages or ()))
                out.append(ChannelProtocolError(cid, str(exc), state.header))
                return out
            if messages:
                # credit flow control per message, apportioning the consumed bytes
                consumed = before + len(data) - state.parser.buffered()
                for i, msg in enumerate(messages):
                    size = consumed if i == len(messages) - 1 else 0
                    out.append(MessageReceived(cid, msg, size))
        if fin:
            if not state.parser.at_boundary:
                state.dead = True
                out.append(ChannelProtocolError(cid, "stream ended inside a message",
                                                state.header))
            else:
                state.eof = True
                out.append(ChannelEOF(cid))
        return out

    def _on_datagram(self, data: bytes) -> list[Event]:
        try:
            control, channel, payload = decode_datagram(data)
        except ProtocolError:
            self.datagrams_dropped += 1
            return []
        return [DatagramReceived(control, channel, payload)]

    def _on_stream_reset(self, event: Any) -> list[Event]:
        sid = event.stream_id
        if sid in self._channels:
            self._channels[sid].dead = True
            return [ChannelReset(sid, event.error_code)]
        if sid in self._pending:
            del self._pending[sid]
            return []
        if sid in self._h3_streams:
            return [HttpStreamReset(sid, event.error_code), *self._h3_handle(event)]
        return self._h3_handle(event)

    def _on_stop_sending(self, event: Any) -> list[Event]:
        sid = event.stream_id
        if sid in self._channels:
            return [ChannelStopSending(sid, event.error_code)]
        return self._h3_handle(event)

    def _h3_handle(self, event: Any) -> list[Event]:
        h3ev = self._backend.h3_events
        out: list[Event] = []
        for e in self._h3.handle_event(event):
            if isinstance(e, h3ev.HeadersReceived):
                if self.is_client:
                    out.append(ResponseReceived(e.stream_id, list(e.headers), e.stream_ended))
                else:
                    early = not self._backend.handshake_complete(self._quic)
                    out.append(RequestReceived(e.stream_id, list(e.headers), e.stream_ended,
                                               early))
            elif isinstance(e, h3ev.DataReceived):
                out.append(HttpDataReceived(e.stream_id, bytes(e.data), e.stream_ended))
        if not self._settings_reported and self._h3.received_settings is not None:
            self._settings_reported = True
            out.append(SettingsReceived(self.peer_extensions))
        return out

    # ------------------------------------------------------------ output

    def send_request(self, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> int:
        sid = self._quic.get_next_available_stream_id()
        self._h3_streams.add(sid)
        self._h3.send_headers(sid, headers, end_stream=end_stream)
        return sid

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                     end_stream: bool = False) -> None:
        self._h3.send_headers(stream_id, headers, end_stream=end_stream)

    def send_http_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self._h3.send_data(stream_id, data, end_stream=end_stream)

    def open_channel(self, header: ChannelHeader, first: bytes = b"",
                     ipv4_mapped: bool = False) -> int:
        """Open a channel; the header (and `first`) go out in one write (Q8)."""
        sid = self._quic.get_next_available_stream_id()
        self._channels[sid] = _ChannelState(sid, local=True, header_parser=None,
                                            parser=self._new_parser(), header=header)
        self._quic.send_stream_data(sid, header.encode(ipv4_mapped=ipv4_mapped) + first)
        return sid

    def send_channel_data(self, channel_id: int, data: bytes, end_stream: bool = False) -> None:
        if end_stream and not data and self._backend.loses_bare_fin and self.peer_extensions:
            # every FIN of ours passes here. A library that can lose a FIN sent on its
            # own (Backend.loses_bare_fin) sends it with bytes: an empty Data message,
            # which every receiver of ours ignores. Only towards a peer that announced
            # our SETTING: a reference reader can lose that message's last byte when the
            # FIN comes with it (Q7), and then fails the channel
            data = EMPTY_DATA_MESSAGE
        self._quic.send_stream_data(channel_id, data, end_stream)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        try:
            self._quic.reset_stream(stream_id, error_code)
        except Exception:  # noqa: BLE001 - the stream may already be finished
            pass

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        try:
            self._quic.stop_stream(stream_id, error_code)
        except Exception:  # noqa: BLE001 - the stream may already be finished
            pass

    def forget_channel(self, channel_id: int) -> None:
        """Ignore whatever else arrives on this channel. The entry stays as a
        tombstone so that late data is never mistaken for a new HTTP/3 stream."""
        state = self._channels.get(channel_id)
        if state is not None:
            state.dead = True
            state.parser = _DEAD_PARSER

    def max_datagram_payload(self, control_stream_id: int, channel_id: int) -> int:
        """Largest UDP payload that fits one DATAGRAM frame now (0 if none do)."""
        peer_max = self._backend.peer_max_datagram_frame_size(self._quic)
        if not peer_max:
            return 0
        header = len(encode_datagram(control_stream_id, channel_id, b""))
        size_of = self._backend.packet_size
        packet = (size_of(self._quic) if size_of is not None
                  else self._quic.configuration.max_datagram_size) - _DATAGRAM_OVERHEAD
        return max(0, min(peer_max, packet) - header)

    def send_datagram(self, control_stream_id: int, channel_id: int, payload: bytes) -> bool:
        """Queue one datagram; drop (return False) what could never be sent, since
        an oversized datagram would block every later one in aioquic (§10.3)."""
        if len(payload) > self.max_datagram_payload(control_stream_id, channel_id):
            self.datagrams_dropped += 1
            return False
        self._quic.send_datagram_frame(encode_datagram(control_stream_id, channel_id, payload))
        return True


def _make_h3(backend: Backend, quic: Any, extensions: int) -> Any:
    base = backend.h3_connection_class

    class _H3(base):  # type: ignore[misc, valid-type]
        def _get_local_settings(self) -> dict[int, int]:
            settings = super()._get_local_settings()
            if extensions:
                settings[SETTING_SSH3_EXTENSIONS] = extensions
            return settings

    return _H3(quic)
