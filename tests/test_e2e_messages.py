"""What the real `ssh3` says when it cannot log in: each failure names what
happened and what to do, and none of them hangs (both QUIC backends)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import (
    BACKENDS,
    HOST,
    USER,
    Client,
    Server,
    find_program,
    known_hosts_line,
    make_key,
)


@pytest.fixture
def server(shared_server: Server) -> Server:
    return shared_server


def ssh3(backend: str, home: Path, *args: str, timeout: float = 60.0
         ) -> tuple[subprocess.CompletedProcess, float]:
    home.mkdir(exist_ok=True)
    started = time.monotonic()
    r = subprocess.run([find_program("ssh3"), "-quic-backend", backend, *args],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                       env=Client(home, Path("unused")).env(),
                       start_new_session=True)
    return r, time.monotonic() - started


def free_udp_port() -> int:
    """A port nothing listens on (the kernel answers with ICMP port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_port_is_refused_at_once(backend: str, tmp_path: Path) -> None:
    port = free_udp_port()
    r, took = ssh3(backend, tmp_path, "-insecure", f"{HOST}:{port}/ssh3-term", "true")
    assert r.returncode == 255
    assert r.stderr == f"ssh3: connect to host {HOST} port {port}: Connection refused\n".encode()
    assert took < 10  # not the 15 s connect timeout: the ICMP error ends it


@pytest.mark.parametrize("backend", BACKENDS)
def test_silent_port_times_out_with_connect_timeout(backend: str, tmp_path: Path) -> None:
    """A UDP socket that swallows every packet: what a firewall dropping UDP looks like."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind((HOST, 0))
        port = sink.getsockname()[1]
        r, took = ssh3(backend, tmp_path, "-insecure", "-o", "ConnectTimeout=2",
                       f"{HOST}:{port}/ssh3-term", "true")
    assert r.returncode == 255
    assert r.stderr.startswith(
        f"ssh3: connect to host {HOST} port {port}: no answer over UDP/QUIC within 2 s "
        "(is UDP blocked?".encode()), r.stderr
    assert 2 <= took < 10


def test_bad_connect_timeout_is_a_usage_error(tmp_path: Path) -> None:
    r, _ = ssh3("aioquic", tmp_path, "-o", "ConnectTimeout=soon", f"{HOST}:1/x", "true")
    assert (r.returncode, r.stderr) == (
        255, b"ssh3: bad ConnectTimeout 'soon': expected seconds\n")


def test_wrong_path_says_no_server_there(server: Server, tmp_path: Path,
                                        user_key: Path) -> None:
    r, _ = ssh3(server.backend, tmp_path, "-insecure", "-i", str(user_key),
                f"{HOST}:{server.port}/not-here", "true")
    assert r.returncode == 255
    assert r.stderr == (f"ssh3: no SSH3 server at https://{HOST}:{server.port}/not-here (404): "
                        "check the URL path (-url-path / URLPath): it must be the server's "
                        "-url-path\n"
                        ).encode()


def test_wrong_key_lists_what_was_tried(server: Server, tmp_path: Path) -> None:
    stranger = make_key(tmp_path / "keys", "id_stranger")
    other = make_key(tmp_path / "keys", "id_other")
    r, _ = ssh3(server.backend, tmp_path, "-insecure", "-i", str(stranger), "-i", str(other),
                f"{USER}@{HOST}:{server.port}{server.url_path}", "true")
    assert r.returncode == 255
    assert r.stderr.decode() == (
        f"ssh3: {USER}@{HOST}: authentication refused (401); tried: publickey {stranger}, "
        f"publickey {other}. Check the user name, that the server accepts one of these "
        "(its authorized_keys), or give another identity with -i\n")


def other_certificate_der() -> bytes:
    """Some other server's self-signed certificate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(Encoding.DER)


def test_changed_certificate_is_refused(server: Server, tmp_path: Path,
                                        user_key: Path) -> None:
    known_hosts = tmp_path / ".ssh3" / "known_hosts"
    known_hosts.parent.mkdir(parents=True)
    # the server's name, another server's certificate
    known_hosts.write_text(known_hosts_line(server.port, other_certificate_der(),
                                            server.url_path))
    r, _ = ssh3(server.backend, tmp_path, "-i", str(user_key),
                f"{HOST}:{server.port}{server.url_path}", "true")
    assert r.returncode == 255
    err = r.stderr.decode()
    assert err.startswith(f"ssh3: the certificate of {HOST}:{server.port}{server.url_path} ("), err
    assert (f"does not match the one remembered in {known_hosts} line 1: someone may be "
            "intercepting the connection") in err, err
    assert f"remove line 1 of {known_hosts} and connect again" in err, err


# ------------------------------------------------------------ a server from the future


class FutureServer:
    """An HTTP/3 server that answers every request 403 as a server speaking
    SSH 4.0 would: our client has no version to retry with."""

    VERSION = b"SSH 4.0 future-ssh3 9.9.9 experimental_spec_version=beta-07"

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        from aioquic.asyncio import QuicConnectionProtocol, serve
        from aioquic.h3.connection import H3_ALPN, H3Connection
        from aioquic.h3.events import HeadersReceived
        from aioquic.quic.configuration import QuicConfiguration

        version = self.VERSION

        class Refuse(QuicConnectionProtocol):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, **kwargs)
                self.h3 = H3Connection(self._quic)

            def quic_event_received(self, event: object) -> None:
                for ev in self.h3.handle_event(event):
                    if isinstance(ev, HeadersReceived):
                        body = (b"Unsupported version: 3.0 not supported by server "
                                b"with version 4.0\n")
                        self.h3.send_headers(ev.stream_id, [(b":status", b"403"),
                                                            (b"server", version)])
                        self.h3.send_data(ev.stream_id, body, end_stream=True)
                        self.transmit()

        cfg = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN,
                                max_datagram_frame_size=65536)
        cfg.load_cert_chain(str(self.cert), str(self.key))
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await serve(HOST, 0, configuration=cfg, create_protocol=Refuse)
        self.port = server._transport.get_extra_info("sockname")[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()

    def __enter__(self) -> FutureServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def future_server(server: Server) -> Iterator[FutureServer]:
    with FutureServer(server.cert, server.key) as fs:
        yield fs


def test_refused_version_names_both(server: Server, future_server: FutureServer,
                                    tmp_path: Path, user_key: Path) -> None:
    r, _ = ssh3(server.backend, tmp_path, "-insecure", "-i", str(user_key),
                f"{HOST}:{future_server.port}/ssh3-term", "true")
    assert r.returncode == 255
    err = r.stderr.decode()
    assert err.startswith(f"ssh3: the server ({FutureServer.VERSION.decode()}) refused our "
                          "protocol version (SSH 3.0 "), err
    assert "(403): Unsupported version: 3.0 not supported by server with version 4.0. " \
           "One side needs an update" in err, err


@pytest.mark.parametrize("backend", BACKENDS)
def test_bind_address_that_is_not_ours(backend: str, tmp_path: Path) -> None:
    """-b (BindAddress) with an address this host does not have."""
    r, _ = ssh3(backend, tmp_path, "-insecure", "-b", "192.0.2.5", f"{HOST}:1/x", "true")
    assert (r.returncode, r.stderr) == (255, (
        f"ssh3: connect to host {HOST} port 1: cannot bind to 192.0.2.5: "
        "Cannot assign requested address\n").encode())


@pytest.mark.parametrize("backend", BACKENDS)
def test_bind_address_reaches_the_server(backend: str, tmp_path: Path, server: Server,
                                         user_key: Path) -> None:
    """-b 127.0.0.2 logs in: the session sees that source address."""
    r, _ = ssh3(backend, tmp_path, "-insecure", "-i", str(user_key), "-b", "127.0.0.2",
                f"{HOST}:{server.port}{server.url_path}", "echo $SSH3_CONNECTION")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == b"127.0.0.2", r.stdout
