"""Adapter for aioquic, the reference backend."""

from __future__ import annotations

import functools
from typing import Any

import aioquic.asyncio
import aioquic.h3.connection
import aioquic.h3.events
import aioquic.quic.configuration
import aioquic.quic.connection
import aioquic.quic.events
import aioquic.tls
from cryptography.hazmat.primitives.serialization import Encoding

from .. import exporter
from .base import Backend
from .over import connect_over

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


def make_backend() -> Backend:
    exporter.install(aioquic.tls)
    return Backend(
        name="aioquic",
        configuration_class=aioquic.quic.configuration.QuicConfiguration,
        quic_events=aioquic.quic.events,
        h3_connection_class=aioquic.h3.connection.H3Connection,
        h3_events=aioquic.h3.events,
        protocol_class=aioquic.asyncio.QuicConnectionProtocol,
        serve=aioquic.asyncio.serve,
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
        connect_over=functools.partial(connect_over, aioquic.quic.connection.QuicConnection),
        adopt_packet_size=_adopt_packet_size,
        packet_size=_packet_size,
    )
