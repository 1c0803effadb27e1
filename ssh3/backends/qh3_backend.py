"""Adapter for qh3 (aioquic's API over a native packet core): the fast backend."""

from __future__ import annotations

import copy
import functools
import os
from typing import Any

import qh3.asyncio
import qh3.h3.connection
import qh3.h3.events
import qh3.quic.configuration
import qh3.quic.connection
import qh3.quic.events
import qh3.tls
from cryptography.hazmat.primitives.serialization import Encoding

from .. import exporter
from . import qh3_server
from .base import Backend
from .over import connect_over


def _send_buffer_size(quic: Any, stream_id: int) -> int:
    return int(quic.get_send_buffer_size(stream_id))


def _peer_certificate_der(quic: Any) -> bytes | None:
    cert = quic.get_peercert()
    return None if cert is None else _der(cert)


def _peer_chain_der(quic: Any) -> list[bytes]:
    return [_der(c) for c in quic.get_issuercerts() or []]


def _der(cert: Any) -> bytes:
    if isinstance(cert, bytes | bytearray):
        return bytes(cert)
    if hasattr(cert, "public_bytes"):
        try:
            return cert.public_bytes(Encoding.DER)
        except TypeError:
            return bytes(cert.public_bytes())
    from cryptography import x509  # rarely needed; costly to import

    return x509.load_pem_x509_certificate(str(cert).encode()).public_bytes(Encoding.DER)


def _handshake_complete(quic: Any) -> bool:
    return bool(quic._handshake_complete)


def _peer_max_datagram_frame_size(quic: Any) -> int | None:
    return quic._remote_max_datagram_frame_size


def _configure_client(configuration: Any) -> None:
    # qh3's client does not offer Ed25519 signatures unless asked, and the
    # reference's self-signed certificates are Ed25519.
    algos = getattr(configuration, "signature_algorithms", None)
    ed25519 = qh3.tls.SignatureAlgorithm.ED25519
    if algos is None:
        configuration.signature_algorithms = [
            ed25519,
            qh3.tls.SignatureAlgorithm.ECDSA_SECP256R1_SHA256,
            qh3.tls.SignatureAlgorithm.ECDSA_SECP384R1_SHA384,
            qh3.tls.SignatureAlgorithm.RSA_PSS_RSAE_SHA256,
            qh3.tls.SignatureAlgorithm.RSA_PKCS1_SHA256,
        ]
    elif ed25519 not in algos:
        configuration.signature_algorithms = [ed25519, *algos]


def _install_receive_window(quic: Any, window: int) -> None:
    # qh3's flow control lives in its native core; its own windows apply.
    return None


# quic-go reads at most 1452-byte UDP payloads; never grow beyond that
MAX_ADOPTED_PACKET_SIZE = 1452


def _adopt_packet_size(quic: Any, size: int) -> None:
    # qh3's native core takes its packet size from the configuration when it is
    # created, on a server at the client's first Initial; it probes upward from
    # there but never goes below. Starting at the size of the client's Initial
    # (which clients pad to their packet size: 1200 for aioquic, 1280 for qh3,
    # 1252 for quic-go, more for a proxy-jump hop) sends nothing bigger than the
    # client does: a target behind a jump host keeps to the tunnel's 1200 bytes,
    # and a jump host gets room to relay them (PROTOCOL.md §10.6)
    if quic._core is not None or quic.configuration.is_client or size < 1200:
        return
    size = min(size, MAX_ADOPTED_PACKET_SIZE)
    if size != quic.configuration.max_datagram_size:
        configuration = copy.copy(quic.configuration)  # shared by all connections
        configuration.max_datagram_size = size
        quic._configuration = configuration


def _packet_size(quic: Any) -> int:
    # qh3's native core probes the path MTU (from the configured size upward) and
    # fails the connection on a datagram bigger than its current size, which the
    # last field of `active_path` tells
    core = quic._core
    if core is not None:
        try:
            return int(core.active_path[5])
        except (AttributeError, IndexError, TypeError, ValueError):
            pass
    return int(quic.configuration.max_datagram_size)


def make_backend() -> Backend:
    exporter.install(qh3.tls)
    return Backend(
        name="qh3",
        configuration_class=qh3.quic.configuration.QuicConfiguration,
        quic_events=qh3.quic.events,
        h3_connection_class=qh3.h3.connection.H3Connection,
        h3_events=qh3.h3.events,
        protocol_class=qh3.asyncio.QuicConnectionProtocol,
        # batched UDP I/O (recvmmsg/GSO) as qh3's client has; the plain endpoint
        # stays available for comparison (docs/throughput.md)
        serve=qh3.asyncio.serve if os.environ.get("SSH3_PLAIN_UDP") else qh3_server.serve,
        connect=qh3.asyncio.connect,
        tls_module=qh3.tls,
        send_buffer_size=_send_buffer_size,
        peer_certificate_der=_peer_certificate_der,
        peer_chain_der=_peer_chain_der,
        handshake_complete=_handshake_complete,
        peer_max_datagram_frame_size=_peer_max_datagram_frame_size,
        configure_client=_configure_client,
        install_receive_window=_install_receive_window,
        consume=lambda quic, stream_id, nbytes: None,
        connect_over=functools.partial(connect_over, qh3.quic.connection.QuicConnection),
        adopt_packet_size=_adopt_packet_size,
        packet_size=_packet_size,
        initial_packet_cap=1280,
        loses_bare_fin=True,
    )
