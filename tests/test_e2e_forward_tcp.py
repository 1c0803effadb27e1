"""TCP forwarding end to end: a real ssh3-server, the real `ssh3` client with -L /
-forward-tcp, and real TCP services on 127.0.0.1 (an HTTP server, a hashing sink)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
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
    library_params,
    run_async,
    stop_process,
    wait_for,
)
from services import fetch, http_server, tcp_service

from ssh3_client.forwarding import ForwardError, parse_local_forward, parse_reference_spec

# ---------------------------------------------------------------------- helpers
# (test_e2e_forward_udp.py imports these)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on right now (the kernel's pick, released at once)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _listening(port: int, udp: bool) -> bool:
    names = ("udp", "udp6") if udp else ("tcp", "tcp6")
    state = "07" if udp else "0A"  # UDP "unconnected", TCP LISTEN
    for name in names:
        with contextlib.suppress(OSError), open(f"/proc/net/{name}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                    return True
    return False


class ForwardingClient:
    """`ssh3 [-N] <forward flags> target [command]` as a subprocess: ready once every
    local port listens (read from /proc, so that no probe connection is made)."""

    def __init__(self, client: Client, server: Server, args: list[str], *,
                 tcp_ports: tuple[int, ...] = (), udp_ports: tuple[int, ...] = (),
                 command: str | None = None, log_dir: Path) -> None:
        extra = list(args) if command is not None else ["-N", *args]
        argv = client.argv(server, command, extra_args=extra)
        self.stderr_path = log_dir / f"client-{os.getpid()}-{time.monotonic_ns()}.err"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=err,
                                         env=client.env(), start_new_session=True)
        ready = wait_for(lambda: self.proc.poll() is not None
                         or (all(_listening(p, False) for p in tcp_ports)
                             and all(_listening(p, True) for p in udp_ports)), 30.0)
        if not ready or self.proc.poll() is not None:
            stop_process(self.proc)
            raise AssertionError(f"forwarding client not ready: {self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_stderr(self, text: str, timeout: float = 10.0) -> bool:
        return wait_for(lambda: text in self.stderr(), timeout)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """A signal (by PID), then the exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)
        try:
            return self.proc.wait(10)
        finally:
            stop_process(self.proc)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


@contextlib.contextmanager
def policy_server(tmp_path: Path, backend: str, authorized_keys: Path,
                  extra_args: list[str]) -> Iterator[Server]:
    server = Server(tmp_path / f"server-{backend}", backend, authorized_keys,
                    extra_args=extra_args)
    with server.running():
        yield server


def sink_server(download: int = 0) -> contextlib.AbstractContextManager[int]:
    """A TCP service that sends `download` pseudo-random bytes, then reads to EOF and
    only then answers `<bytes> <sha256>\\n`: it needs the half-close to reply at all."""
    def serve_one(conn: socket.socket) -> None:
        conn.settimeout(120)
        if download:
            conn.sendall(pattern(download))
        h = hashlib.sha256()
        n = 0
        while data := conn.recv(1 << 20):
            h.update(data)
            n += len(data)
        conn.sendall(f"{n} {h.hexdigest()}\n".encode())

    return tcp_service(serve_one)


def pattern(size: int) -> bytes:
    block = hashlib.sha256(b"ssh3").digest() * 2048  # 64 KiB, not compressible-trivial
    return (block * (size // len(block) + 1))[:size]


def send_and_digest(port: int, payload_mib: int, expect_download: int = 0,
                    timeout: float = 120.0) -> None:
    """Send `payload_mib` MiB, half-close, read the sink's answer (and what it sent
    first), and check both directions byte for byte."""
    block = os.urandom(1 << 20)
    h = hashlib.sha256()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        for _ in range(payload_mib):
            s.sendall(block)
            h.update(block)
        s.shutdown(socket.SHUT_WR)
        received = bytearray()
        while data := s.recv(1 << 20):
            received += data
    downloaded, answer = bytes(received[:expect_download]), bytes(received[expect_download:])
    assert downloaded == pattern(expect_download)
    assert answer.decode() == f"{payload_mib << 20} {h.hexdigest()}\n"


def closed_without_data(port: int) -> bool:
    """Connect, and see the connection closed (or reset) with nothing received."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        try:
            return s.recv(100) == b""
        except ConnectionResetError:
            return True


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=BACKENDS)
def fwd_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               authorized_keys: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp(f"fwd-{request.param}"), request.param,
                    authorized_keys)
    with server.running():
        yield server


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, bytes]:
    directory = tmp_path / "site"
    directory.mkdir()
    body = os.urandom(300_000)
    (directory / "blob.bin").write_bytes(body)
    return directory, body


# ---------------------------------------------------------------------- tests


@pytest.mark.parametrize("client_backend", BACKENDS)
def test_tcp_forwarding(fwd_server, make_client, forwarding_client, site, client_backend):
    """HTTP through -L (with a host name) and -forward-tcp; a half-closing service in
    both directions; a connect failure reported and survived; SIGTERM exits 0."""
    directory, body = site
    client = make_client(client_backend, trust=fwd_server)
    closed = free_port()
    with http_server(directory) as http_port, sink_server(download=3 << 20) as sink_port:
        p_l, p_ref, p_fail, p_sink = (free_port() for _ in range(4))
        fc = forwarding_client(client, fwd_server, [
            "-L", f"{p_l}:localhost:{http_port}",
            f"-forward-tcp={p_ref}/127.0.0.1@{http_port}",
            f"-L{p_fail}:{HOST}:{closed}",
            "-L", f"{HOST}:{p_sink}:{HOST}:{sink_port}",
        ], tcp_ports=(p_l, p_ref, p_fail, p_sink))

        assert fetch(p_l, "blob.bin") == body
        assert fetch(p_ref, "blob.bin") == body
        send_and_digest(p_sink, 2, expect_download=3 << 20)

        # nothing listens at the target: the local connection is closed, the user told
        assert closed_without_data(p_fail)
        assert fc.wait_stderr(f"ssh3: forwarding to {HOST}:{closed} failed: connect to "
                              f"{HOST}:{closed} failed: Connection refused"), fc.stderr()
        # ... and the forwarders keep serving
        assert fetch(p_l, "blob.bin") == body
        assert fetch(p_ref, "blob.bin") == body
        assert fc.stop() == 0, fc.stderr()
    assert f"connect to {HOST}:{closed} failed" in fwd_server.log()
    assert f"for {USER} from {HOST}" in fwd_server.log()


def test_100_mib_through_L(start_server, make_client, forwarding_client):
    """100 MiB up through -L, matching sha256 (the fast backend pair: time)."""
    server = start_server("qh3")
    client = make_client("qh3", trust=server)
    with sink_server() as sink_port:
        port = free_port()
        fc = forwarding_client(client, server, ["-L", f"{port}:{HOST}:{sink_port}"],
                               tcp_ports=(port,))
        send_and_digest(port, 100)
        assert fc.stop(signal.SIGINT) == 0, fc.stderr()


def test_dash_n_ends_with_the_connection(start_server, make_client, forwarding_client):
    """-N runs until the connection ends: the server going away is exit 255."""
    server = start_server("aioquic")
    client = make_client("aioquic", trust=server)
    port = free_port()
    fc = forwarding_client(client, server, ["-L", f"{port}:{HOST}:{free_port()}"],
                           tcp_ports=(port,))
    server.stop()
    assert fc.proc.wait(20) == 255
    assert "ssh3: the connection ended" in fc.stderr()


def test_forwarding_alongside_a_command(fwd_server, make_client, forwarding_client, site):
    """With a command, the forwarder serves while it runs; its exit status is the
    command's, and the listener is gone afterwards."""
    directory, body = site
    client = make_client(fwd_server.backend, trust=fwd_server)
    with http_server(directory) as http_port:
        port = free_port()
        fc = forwarding_client(client, fwd_server, ["-L", f"{port}:{HOST}:{http_port}"],
                               tcp_ports=(port,), command="sleep 2; exit 7")
        assert fetch(port, "blob.bin") == body
        assert fc.proc.wait(20) == 7, fc.stderr()
        assert not _listening(port, False)


def test_disable_tcp_forwarding(tmp_path, authorized_keys, make_client, forwarding_client):
    with policy_server(tmp_path, "aioquic", authorized_keys,
                       ["-disable-tcp-forwarding"]) as server, sink_server() as sink_port:
        client = make_client("qh3", trust=server)
        port = free_port()
        fc = forwarding_client(client, server, ["-L", f"{port}:{HOST}:{sink_port}"],
                               tcp_ports=(port,))
        assert closed_without_data(port)
        assert fc.wait_stderr(f"forwarding to {HOST}:{sink_port} failed: administratively "
                              "prohibited"), fc.stderr()
        assert fc.stop() == 0
        assert wait_for(lambda: f"for {USER} from {HOST}" in server.log()
                        and "TCP forwarding is disabled" in server.log(), 5), server.log()


def test_library_v4_mapped_target_and_refusal(fwd_server, user_key):
    """Through the library: a target sent as AF 6 ::ffff:127.0.0.1 (what the Go CLI
    sends) reaches the IPv4 service; a refused connect is ChannelOpenFailure(2) with
    the "en" language tag, then EOF, and never a confirmation."""
    from ssh3.aio.client import establish, open_connection
    from ssh3.messages import ChannelData, ChannelOpenConfirmation, ChannelOpenFailure

    params = library_params(fwd_server, user_key, fwd_server.backend)
    closed = free_port()

    async def scenario(sink_port: int) -> None:
        async with open_connection(params) as proto:
            conv = await establish(proto, params)
            channel = conv.open_channel("direct-tcp", address=(HOST, sink_port),
                                        ipv4_mapped=True)
            await channel.write(b"hello")
            channel.send_eof()
            got = []
            while (msg := await channel.read()) is not None:
                got.append(msg)
            assert isinstance(got[0], ChannelOpenConfirmation)
            data = b"".join(m.data for m in got if isinstance(m, ChannelData))
            assert data == f"5 {hashlib.sha256(b'hello').hexdigest()}\n".encode()

            refused = conv.open_channel("direct-tcp", address=(HOST, closed))
            first = await refused.read()
            assert isinstance(first, ChannelOpenFailure), first
            assert first.reason_code == 2 and first.language == "en"
            assert first.message.startswith(f"connect to {HOST}:{closed} failed")
            assert await refused.read() is None

    with sink_server() as sink_port:
        run_async(scenario(sink_port), timeout=30)


def test_no_command_with_dash_n_is_refused(tmp_path):
    r = subprocess.run([find_program("ssh3"), "-N", "host.invalid", "true"],
                       capture_output=True, timeout=30, env={**os.environ, "HOME": str(tmp_path)})
    assert r.returncode == 255
    assert b"-N runs no command" in r.stderr


@pytest.mark.parametrize(("text", "expected"), [
    ("8080:localhost:80", ("127.0.0.1", 8080, "localhost", 80)),
    ("0.0.0.0:8080:10.0.0.1:80", ("0.0.0.0", 8080, "10.0.0.1", 80)),
    ("*:8080:10.0.0.1:80", (None, 8080, "10.0.0.1", 80)),
    (":8080:10.0.0.1:80", (None, 8080, "10.0.0.1", 80)),
    ("[::1]:8080:[2001:db8::1]:443", ("::1", 8080, "2001:db8::1", 443)),
])
def test_parse_local_forward(text, expected):
    spec = parse_local_forward(text)
    assert (spec.listen_host, spec.listen_port, spec.target_host, spec.target_port) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("8080/127.0.0.1@80", ("127.0.0.1", 8080, "127.0.0.1", 80)),
    ("5353/::1@53", ("::1", 5353, "::1", 53)),
    ("5353/[2001:db8::1]@53", ("::1", 5353, "2001:db8::1", 53)),
])
def test_parse_reference_spec(text, expected):
    spec = parse_reference_spec(text, "udp")
    assert (spec.listen_host, spec.listen_port, spec.target_host, spec.target_port) == expected


@pytest.mark.parametrize("text", ["8080", "8080:host", "x:host:80", "8080:host:0",
                                  "8080:host:65536", "a:b:c:d:e", "8080:[::1:80"])
def test_parse_local_forward_rejects(text):
    with pytest.raises(ForwardError):
        parse_local_forward(text)


@pytest.mark.parametrize("text", ["8080/localhost@80", "8080@80", "8080/1.2.3.4", "/1.2.3.4@80"])
def test_parse_reference_spec_rejects(text):
    with pytest.raises(ForwardError):
        parse_reference_spec(text, "tcp")
