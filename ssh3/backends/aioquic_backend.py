"""Adapter for aioquic, the reference backend."""

from __future__ import annotations

import functools
import os
from typing import Any

from .lazy import defer_import

defer_import("service_identity")  # before aioquic.tls imports it

import aioquic.asyncio  # noqa: E402
import aioquic.asyncio.server  # noqa: E402
import aioquic.h3.connection  # noqa: E402
import aioquic.h3.events  # noqa: E402
import aioquic.quic.configuration  # noqa: E402
import aioquic.quic.connection  # noqa: E402
import aioquic.quic.events  # noqa: E402
import aioquic.tls  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

from .. import exporter  # noqa: E402
from . import batched_udp  # noqa: E402
from .base import Backend  # noqa: E402
from .over import connect_over  # noqa: E402

# quic-go reads at most 1452-byte UDP payloads; never grow beyond that
MAX_ADOPTED_PACKET_SIZE = 1452


def _send_buffer_size(quic: Any, stream_id: int) -> int:
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    # aioquic keeps unacknowledged bytes in the sender's buffer
    return len(stream.sender._buffer)


def _peer_certificate_der(quic: Any) -> bytes | None:
    cert = getattr(quic.tls, "_peer_certificate", None)
    return None if cert is None else cert.public_bytes(Encoding.DER)


def _peer_chain_der(quic: Any) -> list[bytes]:
    chain = getattr(quic.tls, "_peer_certificate_chain", None) or []
    return [c.public_bytes(Encoding.DER) for c in chain]


def _handshake_complete(quic: Any) -> bool:
    return bool(quic._handshake_complete)


def _peer_max_datagram_frame_size(quic: Any) -> int | None:
    return quic._remote_max_datagram_frame_size


def _configure_client(configuration: Any) -> None:
    return None


def _install_receive_window(quic: Any, window: int) -> None:
    from . import aioquic_flow

    aioquic_flow.install(quic, window)


def _consume(quic: Any, stream_id: int, nbytes: int) -> None:
    from . import aioquic_flow

    aioquic_flow.consume(quic, stream_id, nbytes)


def _adopt_packet_size(quic: Any, size: int) -> None:
    # aioquic has no path MTU discovery: its packets stay at max_datagram_size.
    # A peer whose packets are bigger showed the path carries them; a jump host
    # needs that room to relay the inner connection's packets (PROTOCOL.md §10.6)
    if quic.configuration.is_client:
        return  # a client chooses its size (ConnectParams.max_datagram_size)
    size = min(size, MAX_ADOPTED_PACKET_SIZE)
    if size > quic._max_datagram_size:
        quic._max_datagram_size = size


def _packet_size(quic: Any) -> int:
    return int(quic._max_datagram_size)


def _release_early_streams(quic: Any) -> None:
    """aioquic creates a stream opened before the peer's transport parameters arrive
    (our server's HTTP/3 control stream, made with the connection) as blocked, and
    unblocks it only when the handshake completes, so a server's SETTINGS reach the
    client a round trip after its handshake. The parameters come in the ClientHello:
    once they are here the stream limits are known and the stream may go out with
    the server's first flight (0.5-RTT data, RFC 9000 §7; RFC 9114 §6.2.1). The
    client needs them then to know EXT_EARLY_CHANNELS before its CONNECT."""
    if (quic._streams_blocked_uni and quic._remote_max_streams_uni
            and quic._remote_max_stream_data_uni):
        quic._unblock_streams(is_unidirectional=True)


def make_backend() -> Backend:
    exporter.install(aioquic.tls)
    return Backend(
        name="aioquic",
        configuration_class=aioquic.quic.configuration.QuicConfiguration,
        quic_events=aioquic.quic.events,
        h3_connection_class=aioquic.h3.connection.H3Connection,
        h3_events=aioquic.h3.events,
        protocol_class=aioquic.asyncio.QuicConnectionProtocol,
        # batched receive, one transmit per burst (batched_udp); the library's own
        # endpoint stays available for comparison (docs/throughput.md)
        serve=(aioquic.asyncio.serve if os.environ.get("SSH3_PLAIN_UDP") else
               functools.partial(batched_udp.serve_plain_python,
                                 aioquic.asyncio.server.QuicServer)),
        connect=aioquic.asyncio.connect,
        tls_module=aioquic.tls,
        send_buffer_size=_send_buffer_size,
        peer_certificate_der=_peer_certificate_der,
        peer_chain_der=_peer_chain_der,
        handshake_complete=_handshake_complete,
        peer_max_datagram_frame_size=_peer_max_datagram_frame_size,
        configure_client=_configure_client,
        install_receive_window=_install_receive_window,
        consume=_consume,
        release_early_streams=_release_early_streams,
        connect_over=functools.partial(connect_over, aioquic.quic.connection.QuicConnection),
        adopt_packet_size=_adopt_packet_size,
        packet_size=_packet_size,
        batch_sends=True,
    )
