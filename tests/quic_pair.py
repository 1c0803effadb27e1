"""An in-memory QUIC client/server pair for sans-I/O tests (no sockets, no event loop).

Each side is a real QUIC library connection (aioquic or qh3) wrapped in an
`SSH3Connection`. `Pair.exchange()` moves datagrams back and forth until both sides
are quiet, passing every QUIC event through `SSH3Connection.handle_event` and keeping
the SSH3 events it returns, like the datagram-shuttling helpers of aioquic's tests.
"""

from __future__ import annotations

import importlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssh3 import connection as c
from ssh3.backends import Backend, get_backend
from ssh3.certs import generate_self_signed

CLIENT_ADDR = ("1.2.3.4", 1234)
SERVER_ADDR = ("2.3.4.5", 4433)
MAX_DATAGRAM_FRAME_SIZE = 16383

# qh3 2.1.0's server cannot build its first flight in answer to an aioquic 1.7
# ClientHello (it raises this from datagrams_to_send); over a socket the lost flight
# is retransmitted on a timer and the handshake completes anyway.
QH3_FIRST_FLIGHT_ERROR = "packet builder capacity exhausted"


def certificate(directory: Path) -> tuple[str, str]:
    """A self-signed certificate and key in `directory` (generated once)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if not cert.exists():
        generate_self_signed(str(cert), str(key))
    return str(cert), str(key)


def server_configuration(backend: Backend, cert: str, key: str) -> Any:
    cfg = backend.configuration_class(
        is_client=False,
        alpn_protocols=["h3"],
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
    )
    cfg.load_cert_chain(cert, key)
    return cfg


def client_configuration(backend: Backend) -> Any:
    cfg = backend.configuration_class(
        is_client=True,
        alpn_protocols=["h3"],
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
        server_name="localhost",
    )
    cfg.verify_mode = ssl.CERT_NONE
    backend.configure_client(cfg)
    return cfg


@dataclass
class Endpoint:
    """One side: the QUIC connection, its SSH3Connection and the events so far."""

    backend: Backend
    quic: Any
    conn: c.SSH3Connection
    addr: tuple[str, int]
    events: list[c.Event] = field(default_factory=list)
    quic_events: list[Any] = field(default_factory=list)
    # every DATAGRAM frame payload handed to the SSH3 layer, as received off the wire
    raw_datagrams: list[bytes] = field(default_factory=list)

    def take(self) -> list[c.Event]:
        """The events collected since the last call."""
        out, self.events = self.events, []
        return out

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def drain(self) -> None:
        ev_mod = self.backend.quic_events
        while (event := self.quic.next_event()) is not None:
            self.quic_events.append(event)
            if isinstance(event, ev_mod.DatagramFrameReceived):
                self.raw_datagrams.append(bytes(event.data))
            self.events.extend(self.conn.handle_event(event))


class Pair:
    """A connected client and server; `now` is a fake clock in seconds."""

    def __init__(self, tmp_path: Path, client_backend: str,
                 server_backend: str | None = None, *,
                 tolerate_send_errors: bool = False,
                 server_extensions: int = c.OUR_EXTENSIONS) -> None:
        # get_backend first: it installs the exporter hook on the library's tls.Context
        cb = get_backend(client_backend)
        sb = get_backend(server_backend or client_backend)
        cert, key = certificate(tmp_path)
        self.now = 1.0
        # only an aioquic client with a qh3 server needs this (QH3_FIRST_FLIGHT_ERROR)
        self.tolerate_send_errors = tolerate_send_errors
        self.send_errors: list[str] = []
        cquic = _quic_class(cb)(configuration=client_configuration(cb))
        squic = _quic_class(sb)(
            configuration=server_configuration(sb, cert, key),
            original_destination_connection_id=cquic.original_destination_connection_id,
        )
        self.client = Endpoint(cb, cquic, c.SSH3Connection(cquic, cb, is_client=True),
                               CLIENT_ADDR)
        self.server = Endpoint(sb, squic, c.SSH3Connection(squic, sb, is_client=False,
                                                       extensions=server_extensions),
                               SERVER_ADDR)
        cquic.connect(SERVER_ADDR, now=self.now)

    # ------------------------------------------------------------ shuttling

    def _transfer(self, sender: Endpoint, receiver: Endpoint) -> int:
        try:
            datagrams = sender.quic.datagrams_to_send(now=self.now)
        except Exception as exc:
            if not (self.tolerate_send_errors and QH3_FIRST_FLIGHT_ERROR in str(exc)):
                raise
            self.send_errors.append(str(exc))
            return 0
        for data, _addr in datagrams:
            receiver.quic.receive_datagram(data, sender.addr, now=self.now)
        return len(datagrams)

    def exchange(self, max_rounds: int = 50) -> None:
        """Shuttle datagrams until neither side has anything to send."""
        for _ in range(max_rounds):
            self.now += 0.01
            sent = self._transfer(self.client, self.server)
            self.server.drain()
            sent += self._transfer(self.server, self.client)
            self.client.drain()
            self.server.drain()
            if not sent:
                return
        raise AssertionError(f"no quiescence after {max_rounds} rounds")

    def fire_timers(self) -> None:
        """Jump the clock to the earliest QUIC timer and run it (retransmissions)."""
        timers = [t for t in (self.client.quic.get_timer(), self.server.quic.get_timer())
                  if t is not None]
        if timers:
            self.now = max(self.now, min(timers))
        for side in (self.client, self.server):
            timer = side.quic.get_timer()
            if timer is not None and timer <= self.now:
                side.quic.handle_timer(now=self.now)
            side.drain()

    def run_until(self, done: Callable[[], bool], deadline: float = 10.0) -> None:
        """Exchange and run timers (as an event loop would) until `done()`."""
        start = self.now
        while True:
            self.exchange()
            if done():
                return
            if self.now - start > deadline:
                raise AssertionError(f"condition not reached within {deadline} s")
            self.fire_timers()

    def terminated(self, side: Endpoint) -> c.ConnectionTerminated:
        """Run until `side` reports ConnectionTerminated (the QUIC libraries report
        a peer's CONNECTION_CLOSE only when the draining period ends)."""
        self.run_until(lambda: bool(side.of(c.ConnectionTerminated)))
        return side.of(c.ConnectionTerminated)[0]

    def handshake(self, deadline: float = 10.0) -> Pair:
        """Exchange until both sides report HandshakeCompleted and SETTINGS, running
        the retransmission timers if a flight got lost."""
        self.run_until(lambda: all(side.of(c.HandshakeCompleted) and side.of(c.SettingsReceived)
                                   for side in (self.client, self.server)), deadline)
        return self


def _quic_class(backend: Backend) -> type:
    """The library's QuicConnection class (the Backend does not expose it)."""
    package = backend.configuration_class.__module__.rsplit(".", 1)[0]  # "<lib>.quic"
    return importlib.import_module(package + ".connection").QuicConnection
