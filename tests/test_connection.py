"""The sans-I/O core `SSH3Connection` (PROTOCOL.md §1.6, §3, §5, §10.2, §10.3).

Like aioquic's and h11's tests: no sockets and no event loop. A real QUIC client and
server of each library talk through `quic_pair.Pair`, which moves datagrams in memory
and passes every QUIC event through `SSH3Connection.handle_event`. Where a situation
cannot be produced by a well-behaved peer, synthetic QUIC events are fed directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from quic_pair import Pair

from ssh3 import connection as c
from ssh3.errors import ProtocolError
from ssh3.messages import (
    ChannelData,
    ChannelHeader,
    ChannelOpenConfirmation,
    ExecRequest,
    ExitStatusRequest,
    decode_datagram,
)
from ssh3.wire import encode_string, encode_varint

BACKENDS = ("aioquic", "qh3")

SIGNAL = bytes.fromhex("c0000000af3627e6")
# PROTOCOL.md §3.2 / Appendix A: session, control stream 0, MPS 30000
SESSION_HEADER_0 = bytes.fromhex("c0000000af3627e6 00 07 73657373696f6e 80007530")
EXEC_ECHO_HI = bytes.fromhex("4062 04 65786563 01 07 6563686f206869")
# Appendix A, server -> client on the channel
CONFIRMATION = bytes.fromhex("405b 80007530")
DATA_HI = bytes.fromhex("405e 03 68690a")
EXIT_STATUS_0 = bytes.fromhex("4062 0b 657869742d737461747573 00 00")

# A complete HTTP/3 HEADERS frame for GET https://h:443/ that uses only QPACK static
# table references and literals (no dynamic table, so it decodes on its own):
# required insert count 0, base 0, :method GET (17), :scheme https (23), :path / (1),
# :authority (name 0) = "h:443".
_QPACK_GET = bytes.fromhex("0000 d1 d7 c1 50 05") + b"h:443"
HEADERS_FRAME = b"\x01" + encode_varint(len(_QPACK_GET)) + _QPACK_GET


def connect_headers(authority: bytes = b"localhost:443") -> list[tuple[bytes, bytes]]:
    """The CONNECT request of PROTOCOL.md §2.1."""
    return [
        (b":method", b"CONNECT"),
        (b":protocol", b"ssh3"),
        (b":scheme", b"https"),
        (b":path", b"/ssh3-term?user=alice"),
        (b":authority", authority),
        (b"authorization", b"Bearer x.y.z"),
        (b"user-agent", b"SSH 3.0 francoismichel/ssh3 0.1.7 experimental_spec_version=alpha-00"),
    ]


@pytest.fixture(params=BACKENDS)
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Pair:
    """A client and a server of one library whose handshake is complete."""
    p = Pair(tmp_path, request.param).handshake()
    p.client.take()
    p.server.take()
    return p


def stream_bytes(quic_events: list[Any], stream_id: int) -> bytes:
    """Everything the QUIC layer delivered on one stream, in order."""
    return b"".join(bytes(e.data) for e in quic_events
                    if type(e).__name__ == "StreamDataReceived" and e.stream_id == stream_id)


def feed(conn: c.SSH3Connection, stream_id: int, data: bytes, fin: bool = False) -> list[c.Event]:
    """One synthetic STREAM event, as the QUIC library would deliver it."""
    event = conn._backend.quic_events.StreamDataReceived(
        data=data, end_stream=fin, stream_id=stream_id)
    return conn.handle_event(event)


def feed_bytewise(conn: c.SSH3Connection, stream_id: int, data: bytes,
                  fin: bool = False) -> list[c.Event]:
    out: list[c.Event] = []
    for i in range(len(data)):
        out += feed(conn, stream_id, data[i:i + 1], fin=fin and i == len(data) - 1)
    return out


def kinds(events: list[c.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def open_session(p: Pair, first: bytes = EXEC_ECHO_HI) -> int:
    """CONNECT on stream 0, 200 back, then a session channel (stream 4)."""
    control = p.client.conn.send_request(connect_headers())
    p.exchange()
    p.server.conn.send_headers(control, [(b":status", b"200")])
    p.exchange()
    p.client.take()
    p.server.take()
    return p.client.conn.open_channel(ChannelHeader(control, "session", 30000), first=first)


# ---------------------------------------------------------------- handshake, HTTP/3


@pytest.mark.parametrize("backend", BACKENDS)
def test_handshake_conversation_id_and_settings(tmp_path: Path, backend: str) -> None:
    p = Pair(tmp_path, backend).handshake()
    for side in (p.client, p.server):
        (done,) = side.of(c.HandshakeCompleted)
        assert len(done.conversation_id) == 32
        assert side.conn.conversation_id == done.conversation_id
        (settings,) = side.of(c.SettingsReceived)
        assert settings.extensions == c.OUR_EXTENSIONS
        assert side.conn.peer_extensions == c.OUR_EXTENSIONS
        assert side.conn.peer_settings[c.SETTING_SSH3_EXTENSIONS] == c.OUR_EXTENSIONS
        assert not side.of(c.ConnectionTerminated)
    assert (p.client.of(c.HandshakeCompleted)[0].conversation_id
            == p.server.of(c.HandshakeCompleted)[0].conversation_id)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_extension_setting_means_reference_protocol(tmp_path: Path, backend: str) -> None:
    # a peer that sends no extension setting (as the Go reference) reads as 0
    p = Pair(tmp_path, backend, server_extensions=0).handshake()
    assert p.client.of(c.SettingsReceived) == [c.SettingsReceived(0)]
    assert c.SETTING_SSH3_EXTENSIONS not in p.client.conn.peer_settings
    assert p.server.of(c.SettingsReceived) == [c.SettingsReceived(c.OUR_EXTENSIONS)]


def test_two_connections_have_different_conversation_ids(tmp_path: Path) -> None:
    a = Pair(tmp_path, "aioquic").handshake()
    b = Pair(tmp_path, "aioquic").handshake()
    assert a.client.conn.conversation_id != b.client.conn.conversation_id


def test_extended_connect_request_and_response(pair: Pair) -> None:
    sid = pair.client.conn.send_request(connect_headers())
    assert sid == 0
    pair.exchange()
    (req,) = pair.server.take()
    assert isinstance(req, c.RequestReceived)
    assert req.stream_id == sid
    assert (b":protocol", b"ssh3") in req.headers
    assert (b":method", b"CONNECT") in req.headers
    assert (b":path", b"/ssh3-term?user=alice") in req.headers
    assert req.early is False
    assert req.stream_ended is False
    assert not pair.server.conn.is_channel(sid)

    pair.server.conn.send_headers(sid, [(b":status", b"200"), (b"server", b"SSH 3.0 x")])
    pair.exchange()
    (resp,) = pair.client.take()
    assert resp == c.ResponseReceived(sid, [(b":status", b"200"), (b"server", b"SSH 3.0 x")],
                                      False)
    assert not pair.client.of(c.ConnectionTerminated)
    assert not pair.server.of(c.ConnectionTerminated)


def test_http_data_and_stream_end(pair: Pair) -> None:
    sid = pair.client.conn.send_request(
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
         (b":authority", b"localhost:443")], end_stream=True)
    pair.exchange()
    (req,) = pair.server.take()
    assert isinstance(req, c.RequestReceived) and req.stream_ended
    pair.server.conn.send_headers(sid, [(b":status", b"404")])
    pair.server.conn.send_http_data(sid, b"404 page not found\n", end_stream=True)
    pair.exchange()
    events = pair.client.take()
    assert events[0] == c.ResponseReceived(sid, [(b":status", b"404")], False)
    body = b"".join(e.data for e in events if isinstance(e, c.HttpDataReceived))
    assert body == b"404 page not found\n"
    assert events[-1].stream_ended


# ---------------------------------------------------------------- channels on the wire


def test_session_channel_exchange(pair: Pair) -> None:
    header = ChannelHeader(0, "session", 30000)
    first = ExecRequest(b"echo hi", want_reply=True).encode()
    assert header.encode() == SESSION_HEADER_0
    assert first == EXEC_ECHO_HI
    sid = open_session(pair, first)
    assert sid == 4
    assert pair.client.conn.is_channel(sid)
    pair.exchange()

    # the stream bytes are exactly Appendix A's (one write: header + first message)
    assert stream_bytes(pair.server.quic_events, sid) == SESSION_HEADER_0 + EXEC_ECHO_HI
    events = pair.server.take()
    assert events == [
        c.ChannelOpened(sid, header),
        c.MessageReceived(sid, ExecRequest(b"echo hi", want_reply=True), len(EXEC_ECHO_HI)),
    ]
    assert pair.server.conn.is_channel(sid)
    assert pair.server.conn.channel_header(sid) == header

    reply = (ChannelOpenConfirmation(30000).encode() + ChannelData(b"hi\n").encode()
             + ExitStatusRequest(0).encode())
    assert reply == CONFIRMATION + DATA_HI + EXIT_STATUS_0
    pair.server.conn.send_channel_data(sid, reply)
    pair.exchange()
    assert stream_bytes(pair.client.quic_events, sid) == reply
    events = pair.client.take()
    assert [e.message for e in events] == [
        ChannelOpenConfirmation(30000), ChannelData(b"hi\n"), ExitStatusRequest(0)]
    assert all(isinstance(e, c.MessageReceived) and e.channel_id == sid for e in events)
    assert sum(e.size for e in events) == len(reply)

    pair.client.conn.send_channel_data(sid, b"", end_stream=True)
    pair.exchange()
    # qh3 sends our FIN on an empty Data message (test_lost_fin.py)
    empty = ([c.MessageReceived(sid, ChannelData(b""), 3)]
             if pair.client.backend.loses_bare_fin else [])
    assert pair.server.take() == [*empty, c.ChannelEOF(sid)]
    assert not pair.client.of(c.ConnectionTerminated)
    assert not pair.server.of(c.ConnectionTerminated)


def test_channel_header_alone_then_messages(pair: Pair) -> None:
    """An opener may send the header before any message (§3.2)."""
    sid = open_session(pair, first=b"")
    pair.exchange()
    assert pair.server.take() == [c.ChannelOpened(sid, ChannelHeader(0, "session", 30000))]
    pair.client.conn.send_channel_data(sid, EXEC_ECHO_HI)
    pair.exchange()
    assert pair.server.take() == [c.MessageReceived(sid, ExecRequest(b"echo hi", True),
                                                    len(EXEC_ECHO_HI))]


def test_direct_tcp_header_on_the_wire(pair: Pair) -> None:
    sid = open_session(pair, first=b"")
    pair.exchange()
    pair.server.take()
    header = ChannelHeader(0, "direct-tcp", 30000, ("127.0.0.1", 8080))
    sid = pair.client.conn.open_channel(header, ipv4_mapped=True)
    pair.exchange()
    # §3.3: the Go CLI's AF 6 v4-mapped form, parsed back to the IPv4 literal
    assert stream_bytes(pair.server.quic_events, sid) == bytes.fromhex(
        "c0000000af3627e6 00 0a 6469726563742d746370 80007530"
        " 06 00000000000000000000ffff7f000001 1f90")
    assert pair.server.take() == [c.ChannelOpened(sid, header)]


def test_server_opened_channel_is_accepted_by_client(pair: Pair) -> None:
    """agent-connection channels run on server-initiated streams (§3.1)."""
    open_session(pair, first=b"")
    pair.exchange()
    pair.server.take()
    header = ChannelHeader(0, "agent-connection", 30000)
    sid = pair.server.conn.open_channel(header, first=ChannelData(b"agent").encode())
    assert sid % 4 == 1
    pair.exchange()
    assert pair.client.take() == [
        c.ChannelOpened(sid, header),
        c.MessageReceived(sid, ChannelData(b"agent"), len(ChannelData(b"agent").encode())),
    ]
    pair.client.conn.send_channel_data(sid, CONFIRMATION)
    pair.exchange()
    assert pair.server.take() == [c.MessageReceived(sid, ChannelOpenConfirmation(30000), 6)]
    assert not pair.client.of(c.ConnectionTerminated)


def test_channel_reset_and_stop_sending_bypass_http3(pair: Pair) -> None:
    sid = open_session(pair)
    pair.exchange()
    pair.server.take()
    pair.client.conn.stop_stream(sid, c.STOP_SENDING_TCP_WRITE_FAILED)
    pair.exchange()
    assert c.ChannelStopSending(sid, 42) in pair.server.take()
    # the QUIC library answers STOP_SENDING with RESET_STREAM of the same code (§10.2)
    assert pair.client.take() == [c.ChannelReset(sid, 42)]

    pair.client.conn.reset_stream(sid, c.H3_REQUEST_INCOMPLETE)
    pair.exchange()
    assert pair.server.take() == [c.ChannelReset(sid, c.H3_REQUEST_INCOMPLETE)]
    assert not pair.client.of(c.ConnectionTerminated)
    assert not pair.server.of(c.ConnectionTerminated)


# ---------------------------------------------------------------- demultiplexing


@pytest.mark.parametrize("backend", BACKENDS)
def test_header_split_into_single_bytes(tmp_path: Path, backend: str) -> None:
    p = Pair(tmp_path, backend).handshake()
    events = feed_bytewise(p.server.conn, 4, SESSION_HEADER_0 + EXEC_ECHO_HI)
    assert events == [
        c.ChannelOpened(4, ChannelHeader(0, "session", 30000)),
        c.MessageReceived(4, ExecRequest(b"echo hi", want_reply=True), len(EXEC_ECHO_HI)),
    ]
    assert p.server.conn.is_channel(4)
    assert feed(p.server.conn, 4, b"", fin=True) == [c.ChannelEOF(4)]


def test_every_split_point(pair: Pair) -> None:
    data = SESSION_HEADER_0 + EXEC_ECHO_HI + DATA_HI
    for cut in range(len(data) + 1):
        sid = 4 * (cut + 2)
        events = feed(pair.server.conn, sid, data[:cut]) + feed(pair.server.conn, sid,
                                                                 data[cut:], fin=True)
        assert kinds(events) == ["ChannelOpened", "MessageReceived", "MessageReceived",
                                 "ChannelEOF"], cut
        assert sum(e.size for e in events if isinstance(e, c.MessageReceived)) \
            == len(EXEC_ECHO_HI + DATA_HI)


def test_non_signal_stream_goes_to_http3(pair: Pair) -> None:
    """First byte 0x01 (an HTTP/3 HEADERS frame): not a channel, even byte by byte."""
    events = feed_bytewise(pair.server.conn, 8, HEADERS_FRAME)
    assert not any(isinstance(e, c.ChannelOpened) for e in events)
    assert not pair.server.conn.is_channel(8)
    (req,) = events
    assert isinstance(req, c.RequestReceived) and req.stream_id == 8
    assert (b":authority", b"h:443") in req.headers


def test_other_eight_byte_frame_type_goes_to_http3(pair: Pair) -> None:
    """An 8-byte first varint that is not the signal (here a reserved frame type 0x21
    with an empty body, then HEADERS) is still HTTP/3 (§3.6)."""
    other = bytes.fromhex("c000000000000021 00")
    events = feed_bytewise(pair.server.conn, 8, other + HEADERS_FRAME)
    assert kinds(events) == ["RequestReceived"]
    assert not pair.server.conn.is_channel(8)


def test_almost_signal_is_not_a_channel(pair: Pair) -> None:
    near = bytes.fromhex("c0000000af3627e7 00")  # signal + 1: unknown frame, length 0
    events = feed(pair.server.conn, 8, near[:5]) + feed(pair.server.conn, 8, near[5:])
    assert events == []
    assert not pair.server.conn.is_channel(8)
    assert kinds(feed(pair.server.conn, 8, HEADERS_FRAME)) == ["RequestReceived"]


def test_signal_prefix_then_reset_is_forgotten(pair: Pair) -> None:
    assert feed(pair.server.conn, 8, SIGNAL[:3]) == []
    reset = pair.server.backend.quic_events.StreamReset(error_code=0x10C, stream_id=8)
    assert pair.server.conn.handle_event(reset) == []
    assert not pair.server.conn.is_channel(8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_client_closes_on_server_stream_that_is_not_a_channel(tmp_path: Path,
                                                               backend: str) -> None:
    p = Pair(tmp_path, backend).handshake()
    assert feed(p.client.conn, 1, HEADERS_FRAME) == []
    assert p.terminated(p.server).error_code == c.H3_FRAME_UNEXPECTED == 0x105


def test_client_accepts_synthetic_server_channel(pair: Pair) -> None:
    events = feed_bytewise(pair.client.conn, 1, SESSION_HEADER_0 + DATA_HI)
    assert kinds(events) == ["ChannelOpened", "MessageReceived"]
    pair.exchange()
    assert not pair.server.of(c.ConnectionTerminated)


# ---------------------------------------------------------------- bad channel input


def _bad_input_cases() -> list[tuple[str, bytes, bool, bool]]:
    """(name, stream bytes after which an error is due, fin, header valid)."""
    direct_tcp_bad_af = (SIGNAL + b"\x00" + encode_string(b"direct-tcp")
                         + encode_varint(30000) + b"\x05" + b"\x7f\x00\x00\x01\x1f\x90")
    return [
        ("invalid address family", direct_tcp_bad_af, False, False),
        ("unknown message type 93", SESSION_HEADER_0 + bytes.fromhex("405d"), False, True),
        ("oversized string length",
         SESSION_HEADER_0 + bytes.fromhex("405e") + encode_varint((1 << 20) + 1), False, True),
        ("oversized channel type",
         SIGNAL + b"\x00" + encode_varint(65) + b"x" * 65, False, False),
        ("FIN inside a message", SESSION_HEADER_0 + bytes.fromhex("405e 05") + b"he",
         True, True),
        ("FIN inside the header", SESSION_HEADER_0[:12], True, False),
    ]


@pytest.mark.parametrize(("name", "data", "fin", "header_ok"), _bad_input_cases(),
                         ids=[case[0] for case in _bad_input_cases()])
@pytest.mark.parametrize("bytewise", [False, True], ids=["one-write", "bytewise"])
def test_bad_channel_input(pair: Pair, name: str, data: bytes, fin: bool, header_ok: bool,
                           bytewise: bool) -> None:
    conn = pair.server.conn
    events = (feed_bytewise if bytewise else feed)(conn, 4, data, fin=fin)
    errors = [e for e in events if isinstance(e, c.ChannelProtocolError)]
    assert len(errors) == 1, events
    assert errors[0].channel_id == 4
    # fed byte by byte, whatever follows the offending byte is discarded (and credited)
    tail = events[events.index(errors[0]) + 1:]
    assert all(isinstance(e, c.DataDiscarded) and e.size == 1 for e in tail), tail
    if not bytewise:
        assert not tail
    opened = [e for e in events if isinstance(e, c.ChannelOpened)]
    assert len(opened) == (1 if header_ok else 0)
    if header_ok:
        assert errors[0].header == ChannelHeader(0, "session", 30000)
    assert not [e for e in events if isinstance(e, c.MessageReceived)]

    # the channel is dead: later input raises nothing and yields only flow credit
    later = feed(conn, 4, DATA_HI) + feed(conn, 4, b"\x00" * 10, fin=True)
    assert later == [c.DataDiscarded(4, len(DATA_HI)), c.DataDiscarded(4, 10)]
    assert conn.is_channel(4)
    pair.exchange()
    assert not pair.server.of(c.ConnectionTerminated)
    assert not pair.client.of(c.ConnectionTerminated)


def test_messages_before_bad_bytes_in_same_chunk_are_delivered(pair: Pair) -> None:
    """errors.ProtocolError.messages exists for exactly this case (an exit-status just
    before garbage); SSH3Connection._channel_input ignores it."""
    events = feed(pair.server.conn, 4, SESSION_HEADER_0 + EXIT_STATUS_0 + bytes.fromhex("405d"))
    assert kinds(events) == ["ChannelOpened", "MessageReceived", "ChannelProtocolError"]
    assert events[1].message == ExitStatusRequest(0)


def test_valid_messages_before_error_in_earlier_chunks_are_kept(pair: Pair) -> None:
    events = feed(pair.server.conn, 4, SESSION_HEADER_0 + EXIT_STATUS_0)
    events += feed(pair.server.conn, 4, bytes.fromhex("405d"))
    assert kinds(events) == ["ChannelOpened", "MessageReceived", "ChannelProtocolError"]


def test_max_message_size_is_configurable(pair: Pair) -> None:
    conn = c.SSH3Connection(pair.server.quic, pair.server.backend, is_client=False,
                            max_message_size=16)
    ok = ChannelData(b"x" * 16).encode()
    big = ChannelData(b"x" * 17).encode()
    assert kinds(feed(conn, 4, SESSION_HEADER_0 + ok)) == ["ChannelOpened", "MessageReceived"]
    assert kinds(feed(conn, 4, big)) == ["ChannelProtocolError"]


# ---------------------------------------------------------------- forget_channel


def test_forget_channel_leaves_a_tombstone(pair: Pair) -> None:
    sid = open_session(pair)
    pair.exchange()
    assert kinds(pair.server.take()) == ["ChannelOpened", "MessageReceived"]
    pair.server.conn.forget_channel(sid)
    assert pair.server.conn.is_channel(sid)

    # an HTTP/3 SETTINGS frame: on a request stream the H3 layer would close the
    # whole connection with H3_FRAME_UNEXPECTED if it were handed these bytes
    late = bytes.fromhex("04 00") + DATA_HI
    pair.client.conn.send_channel_data(sid, late)
    pair.exchange()
    assert pair.server.take() == [c.DataDiscarded(sid, len(late))]

    # synthetic as well, with FIN
    assert feed(pair.server.conn, sid, b"\x01\x00", fin=True) == [c.DataDiscarded(sid, 2)]
    pair.exchange()
    assert not pair.server.of(c.ConnectionTerminated)
    assert not pair.client.of(c.ConnectionTerminated)


def test_forget_unknown_channel_is_harmless(pair: Pair) -> None:
    pair.server.conn.forget_channel(12)
    assert not pair.server.conn.is_channel(12)


# ---------------------------------------------------------------- datagrams


def test_datagram_layout(pair: Pair) -> None:
    assert pair.client.conn.send_datagram(0, 4, b"ping") is True
    pair.exchange()
    assert pair.server.raw_datagrams == [bytes.fromhex("00 04 70696e67")]
    assert pair.server.take() == [c.DatagramReceived(0, 4, b"ping")]

    assert pair.client.conn.send_datagram(4, 101, b"ping") is True
    pair.exchange()
    assert pair.server.raw_datagrams[-1] == bytes.fromhex("04 4065 70696e67")
    assert pair.server.take() == [c.DatagramReceived(4, 101, b"ping")]

    # and the other way round
    assert pair.server.conn.send_datagram(0, 4, b"pong") is True
    pair.exchange()
    assert pair.client.raw_datagrams == [bytes.fromhex("00 04 706f6e67")]
    assert pair.client.take() == [c.DatagramReceived(0, 4, b"pong")]


def test_oversized_datagram_is_refused_and_does_not_block(pair: Pair) -> None:
    conn = pair.client.conn
    limit = conn.max_datagram_payload(0, 4)
    # the packet size now: qh3's path MTU discovery may have grown it past the config
    assert 1000 < limit < pair.client.backend.packet_size(pair.client.quic)
    assert conn.send_datagram(0, 4, b"x" * (limit + 1)) is False
    assert conn.datagrams_dropped == 1
    assert conn.send_datagram(0, 4, b"small") is True
    pair.exchange()
    assert pair.server.take() == [c.DatagramReceived(0, 4, b"small")]
    # the largest allowed payload really fits in one packet
    assert conn.send_datagram(0, 4, b"y" * limit) is True
    assert conn.send_datagram(0, 4, b"after") is True
    pair.exchange()
    assert pair.server.take() == [c.DatagramReceived(0, 4, b"y" * limit),
                                  c.DatagramReceived(0, 4, b"after")]
    assert conn.datagrams_dropped == 1


def test_datagram_limit_accounts_for_id_sizes(pair: Pair) -> None:
    conn = pair.client.conn
    assert conn.max_datagram_payload(0, 4) - conn.max_datagram_payload(4, 101) == 1
    assert conn.max_datagram_payload(0, 4) - conn.max_datagram_payload(1 << 30, 1 << 30) == 14


def test_no_datagrams_before_the_peer_allows_them(tmp_path: Path) -> None:
    p = Pair(tmp_path, "aioquic")  # handshake not run: no transport parameters yet
    assert p.client.conn.max_datagram_payload(0, 4) == 0
    assert p.client.conn.send_datagram(0, 4, b"ping") is False
    assert p.client.conn.datagrams_dropped == 1


@pytest.mark.parametrize("raw", [b"", b"\x40", b"\x00", b"\x00\x80\x00", b"\xc0\x00\x00"])
def test_malformed_datagram_is_dropped(pair: Pair, raw: bytes) -> None:
    conn = pair.server.conn
    event = pair.server.backend.quic_events.DatagramFrameReceived(data=raw)
    assert conn.handle_event(event) == []
    assert conn.datagrams_dropped == 1
    with pytest.raises(ProtocolError):  # the layout itself rejects it
        decode_datagram(raw)


def test_malformed_datagram_on_the_wire(pair: Pair) -> None:
    pair.client.quic.send_datagram_frame(b"\x40")  # truncated 2-byte varint
    pair.exchange()
    assert pair.server.take() == []
    assert pair.server.conn.datagrams_dropped == 1
    assert pair.client.conn.send_datagram(0, 4, b"ok")
    pair.exchange()
    assert pair.server.take() == [c.DatagramReceived(0, 4, b"ok")]
    assert not pair.client.of(c.ConnectionTerminated)


def test_empty_payload_datagram(pair: Pair) -> None:
    assert pair.client.conn.send_datagram(0, 4, b"")
    pair.exchange()
    assert pair.server.take() == [c.DatagramReceived(0, 4, b"")]


# ---------------------------------------------------------------- termination


def test_connection_terminated_event(pair: Pair) -> None:
    pair.client.quic.close(error_code=c.H3_NO_ERROR, reason_phrase="bye")
    ev = pair.terminated(pair.server)
    assert len(pair.server.of(c.ConnectionTerminated)) == 1
    assert ev.error_code == c.H3_NO_ERROR
    assert ev.reason == "bye"
