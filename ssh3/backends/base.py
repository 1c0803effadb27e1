"""What an adapter provides: the library's classes plus the few operations whose
spelling differs between QUIC libraries (see DESIGN.md, "The QUIC seam")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Backend:
    name: str
    # library modules and classes
    configuration_class: type
    quic_events: ModuleType
    h3_connection_class: type
    h3_events: ModuleType
    protocol_class: type
    serve: Callable[..., Any]
    connect: Callable[..., Any]
    tls_module: ModuleType
    # operations whose spelling differs between libraries
    send_buffer_size: Callable[[Any, int], int]
    peer_certificate_der: Callable[[Any], bytes | None]
    peer_chain_der: Callable[[Any], list[bytes]]
    handshake_complete: Callable[[Any], bool]
    peer_max_datagram_frame_size: Callable[[Any], int | None]
    configure_client: Callable[[Any], None]
    install_receive_window: Callable[[Any, int], None]
    consume: Callable[[Any, int, int], None]
    # server: let streams opened before the client's transport parameters were known
    # (the HTTP/3 control stream with SETTINGS) go out in the first flight (0.5-RTT)
    release_early_streams: Callable[[Any], None] = lambda quic: None
    # connect_over(transport, addr, configuration=, create_protocol=): an async
    # context manager like `connect`, over a datagram transport we supply (proxy jump)
    connect_over: Callable[..., Any] | None = None
    # adopt_packet_size(quic, size): the peer sent a UDP payload of `size` bytes, so
    # the path carries that much; a library without path MTU discovery may grow
    # its packets up to it (a jump host must carry inner packets plus framing)
    adopt_packet_size: Callable[[Any, int], None] | None = None
    # packet_size(quic): the largest UDP payload this connection sends now
    packet_size: Callable[[Any], int] | None = None
    # a client's first Initial is padded to at most this many bytes (qh3: 1280),
    # whatever its configured packet size: a server sizing itself on it learns less
    initial_packet_cap: int | None = None
    # the library can lose a FIN sent on its own (a FIN-only STREAM frame): qh3 2.1.0
    # sometimes never resends one whose packet was lost (like aioquic issue #438).
    # Then a FIN towards a peer of ours rides on an empty Data message
    # (SSH3Connection.send_channel_data; docs/extensions.md)
    loses_bare_fin: bool = False
    # the library's protocol sends each packet with its own sendto: batch the packets
    # of a transmit into GSO sends (backends/gso.py)
    batch_sends: bool = False
