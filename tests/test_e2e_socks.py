"""Dynamic forwarding (-D) end to end: the real `ssh3 -N -D` client and ssh3-server,
a real HTTP server on 127.0.0.1 fetched with curl through SOCKS5 (name resolved on
the server) and SOCKS4a, and a SOCKS5 CONNECT to a closed port."""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_helpers import BACKENDS, HOST, Client, Server
from services import http_service
from test_e2e_forward_tcp import ForwardingClient, free_port

BODY = b"hello through socks\n" * 50


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    with http_service(_Handler) as port:
        yield port


def _curl(proxy_flag: str, socks_port: int, url: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", "--noproxy", "",
                           proxy_flag, f"{HOST}:{socks_port}", url],
                          capture_output=True, timeout=30)


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@needs_curl
@pytest.mark.parametrize("backend", BACKENDS)
def test_curl_through_socks(start_server: Callable[..., Server],
                            make_client: Callable[..., Client], tmp_path: Path,
                            http_port: int, backend: str) -> None:
    server = start_server(backend)
    client = make_client(backend, trust=server)
    socks_port = free_port()
    fwd = ForwardingClient(client, server, ["-v", "-D", str(socks_port)],
                           tcp_ports=(socks_port,), log_dir=tmp_path)
    try:
        url = f"http://localhost:{http_port}/"
        for flag in ("--socks5-hostname", "--socks4a", "--socks5", "--socks4"):
            got = _curl(flag, socks_port, url)
            assert got.returncode == 0, (flag, got.stderr, fwd.stderr())
            assert got.stdout == BODY
        # SOCKS5 with a name: resolved by the server, through our extension
        assert "to localhost:" in server.log()
    finally:
        fwd.stop()


def _socks5_connect(socks_port: int, port: int) -> bytes:
    with socket.create_connection((HOST, socks_port), timeout=20) as s:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x03\x09localhost" + port.to_bytes(2, "big"))
        answer = b""
        while len(answer) < 10:
            chunk = s.recv(10 - len(answer))
            if not chunk:
                break
            answer += chunk
        return answer


def test_socks5_refused(start_server: Callable[..., Server],
                        make_client: Callable[..., Client], tmp_path: Path) -> None:
    server = start_server("aioquic")
    client = make_client("aioquic", trust=server)
    socks_port = free_port()
    fwd = ForwardingClient(client, server, ["-D", f"{HOST}:{socks_port}"],
                           tcp_ports=(socks_port,), log_dir=tmp_path)
    try:
        answer = _socks5_connect(socks_port, free_port())
        assert answer[:2] == b"\x05\x05", answer  # connection refused
        # SOCKS4 to a closed port: rejected
        with socket.create_connection((HOST, socks_port), timeout=20) as s:
            s.sendall(b"\x04\x01" + free_port().to_bytes(2, "big") + b"\x7f\x00\x00\x01\x00")
            assert s.recv(8)[:2] == b"\x00\x5b"
        # the listener goes on after failures
        answer = _socks5_connect(socks_port, free_port())
        assert answer[:2] == b"\x05\x05"
    finally:
        fwd.stop()


def test_usage_error() -> None:
    from ssh3_client.cli import UsageError, parse_args

    with pytest.raises(UsageError):
        parse_args(["-D", "notaport", "host"])
    assert parse_args(["-D1080", "host"]).dynamic[0].listen_port == 1080
