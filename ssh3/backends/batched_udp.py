"""Batched receive for QUIC servers.

A QUIC library's `serve` sits on asyncio's datagram endpoint, which reads one packet
per readiness callback; the library then updates the connection and transmits (an
ACK at least) for every packet. On a bulk upload the server spends about a third of
its time in those per-packet transmits. Here the server reads what the socket holds
(up to `BURST` packets), hands each connection its packets of the burst at once
(`datagrams_received`), and the connection transmits once per burst.

`BatchingServerMixin` goes before the library's QuicServer class (aioquic's and
qh3's keep their connections in `_protocols` by connection ID);
`BatchedDatagramTransport` is the pure-Python transport used under aioquic (qh3
brings its own, with recvmmsg and GSO: see qh3_server.py).
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any

from . import gso

BURST = 64  # packets read per readiness callback at most: others get their turn
RECV_SIZE = 65536


class BatchingServerMixin:
    """`datagrams_received` for a QuicServer: short-header packets (those of an
    established connection) go to their connection in runs; anything else
    (handshakes, unknown connection IDs, version negotiation) takes the library's
    own per-packet path."""

    _configuration: Any
    _protocols: dict[bytes, Any]

    def datagrams_received(self, datagrams: list[bytes], addr: Any) -> None:
        cid_len = self._configuration.connection_id_length
        protocols = self._protocols
        run: list[bytes] = []
        run_proto: Any = None
        for data in datagrams:
            proto = None
            if data and not data[0] & 0x80:  # short header: the DCID follows byte 0
                proto = protocols.get(data[1:1 + cid_len])
            if proto is not None and proto is run_proto:
                run.append(data)
                continue
            if run:
                _deliver(run_proto, run, addr)
                run = []
            if proto is None:
                run_proto = None
                self.datagram_received(data, addr)  # type: ignore[attr-defined]
            else:
                run_proto = proto
                run.append(data)
        if run:
            _deliver(run_proto, run, addr)


def _deliver(proto: Any, datagrams: list[bytes], addr: Any) -> None:
    batch = getattr(proto, "datagrams_received", None)
    if batch is not None:
        batch(datagrams, addr)
    else:  # a protocol class without the batch entry point: one at a time
        for data in datagrams:
            proto.datagram_received(data, addr)


class BatchedDatagramTransport(asyncio.DatagramTransport):
    """A datagram transport that reads up to BURST packets per readiness callback
    and delivers them as `protocol.datagrams_received(list, addr)` runs (consecutive
    packets from one address). Sends go straight to sendto; what the socket cannot
    take now waits in a queue, drained when it becomes writable."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: Any) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._queued_bytes = 0
        self._closing = False
        self._gso: bool | None = None
        self._extra = {"socket": sock, "sockname": sock.getsockname(), "peername": None}
        sock.setblocking(False)

    def start(self) -> None:
        self._protocol.connection_made(self)
        self._loop.add_reader(self._fd, self._read_ready)

    # ---------------------------------------------------------------- receive

    def _read_ready(self) -> None:
        recvfrom = self._sock.recvfrom
        run: list[bytes] = []
        run_addr: Any = None
        for _ in range(BURST):
            try:
                data, addr = recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._protocol.error_received(exc)
                break
            if run and addr != run_addr:
                self._protocol.datagrams_received(run, run_addr)
                run = []
                if self._closing:
                    return
            run.append(data)
            run_addr = addr
        if run:
            self._protocol.datagrams_received(run, run_addr)

    # ---------------------------------------------------------------- send

    def sendto(self, data: bytes, addr: Any = None) -> None:  # type: ignore[override]
        if self._closing:
            return
        if not self._queue:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._write_ready)
            except OSError as exc:
                self._protocol.error_received(exc)
                return
        self._queue.append((bytes(data), addr))
        self._queued_bytes += len(data)

    def _write_ready(self) -> None:
        while self._queue:
            data, addr = self._queue[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            self._queue.popleft()
            self._queued_bytes -= len(data)
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._finish()

    def gso_socket(self) -> socket.socket | None:
        """The socket, for gso.GsoSender's batched sends, if the kernel can segment."""
        if self._gso is None:
            self._gso = gso.gso_supported(self._sock)
        return self._sock if self._gso and not self._closing else None

    # ---------------------------------------------------------------- transport API

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def get_protocol(self) -> Any:
        return self._protocol

    def set_protocol(self, protocol: Any) -> None:
        self._protocol = protocol

    def get_write_buffer_size(self) -> int:
        return self._queued_bytes

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._queue:
            self._finish()

    def abort(self) -> None:
        self._queue.clear()
        self._queued_bytes = 0
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._finish()

    def _finish(self) -> None:
        if self._sock.fileno() == -1:
            return
        self._loop.remove_writer(self._fd)
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)


def bind_udp(host: str, port: int) -> socket.socket:
    """A UDP socket bound like asyncio's `create_datagram_endpoint(local_addr=...)`."""
    family, type_, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def server_class(base: type) -> type:
    """The library's QuicServer with `datagrams_received` (cached per base)."""
    cls = _server_classes.get(base)
    if cls is None:
        cls = type(f"Batching{base.__name__}", (BatchingServerMixin, base), {})
        _server_classes[base] = cls
    return cls


_server_classes: dict[type, type] = {}


async def serve_plain_python(base: type, host: str, port: int, **kwargs: Any) -> Any:
    """`serve` for a library whose QuicServer is `base`, on BatchedDatagramTransport."""
    loop = asyncio.get_running_loop()
    sock = bind_udp(host, port)
    server = server_class(base)(**kwargs)
    transport = BatchedDatagramTransport(loop, sock, server)
    transport.start()
    return server
