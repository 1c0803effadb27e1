"""Remote forwarding (-R) end to end: a real ssh3-server, the real `ssh3` client with
-R, and real TCP services on 127.0.0.1 reached through the port the *server* listens
on (EXT_REVERSE_TCP, docs/extensions.md)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_helpers import HOST, USER, Client, Server, wait_for
from services import fetch, http_server
from test_e2e_forward_tcp import (  # shared helpers, not tests
    ForwardingClient,
    _listening,
    free_port,
    pattern,
    policy_server,
    sink_server,
)

ALLOCATED_RE = re.compile(r"Allocated port (\d+) for remote forward to (\S+)")


def _connect_refused(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def _site(tmp_path: Path) -> tuple[Path, bytes]:
    site = tmp_path / "site"
    site.mkdir()
    body = b"served from the client side\n"
    (site / "index.html").write_bytes(body)
    (site / "big.bin").write_bytes(pattern(3 << 20))
    return site, body


def _allocated(fc: ForwardingClient) -> int:
    assert wait_for(lambda: ALLOCATED_RE.search(fc.stderr()), 30), fc.stderr()
    match = ALLOCATED_RE.search(fc.stderr())
    assert match is not None
    return int(match.group(1))


def _hashed_exchange(port: int, payload: bytes, why: Callable[[], str]) -> bytes:
    """Send `payload`, half-close, and read the sink's answer to EOF."""
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except TimeoutError:
            raise AssertionError(f"no EOF after {len(answer)} bytes from {sock.getsockname()}"
                                 f"\n{why()}") from None
    return answer


def test_fixed_port_serves_http_and_goes_away(
        server: Server, make_client: Callable[..., Client], tmp_path: Path,
        forwarding_client: Callable[..., ForwardingClient]) -> None:
    """-R PORT:127.0.0.1:HTTP: the server listens on PORT (loopback), each connection
    reaches the client's HTTP server; once the client exits the port is closed."""
    client = make_client(server.backend, trust=server)
    site, body = _site(tmp_path)
    with http_server(site) as http_port:
        port = free_port()
        fc = forwarding_client(client, server, ["-R", f"{port}:{HOST}:{http_port}"],
                               tcp_ports=(port,))
        assert fetch(port) == body
        big = fetch(port, "big.bin")
        assert hashlib.sha256(big).digest() == hashlib.sha256(pattern(3 << 20)).digest()
        assert "Allocated port" not in fc.stderr()  # only for port 0, as OpenSSH
        assert fc.stop() == 0
        # the listener belongs to the conversation: gone with the client
        assert wait_for(lambda: not _listening(port, False), 15), server.log()
        assert _connect_refused(port)
    assert server.alive()
    log = server.log()
    assert f"remote forward for {USER}" in log and "listening on" in log


def test_port_zero_reports_allocated_port(
        server: Server, make_client: Callable[..., Client], tmp_path: Path,
        forwarding_client: Callable[..., ForwardingClient]) -> None:
    """-R 0:...: the server picks the port and the client prints OpenSSH's
    "Allocated port N for remote forward to host:hostport"; several connections at
    once are relayed independently."""
    client = make_client(server.backend, trust=server)
    site, body = _site(tmp_path)
    with http_server(site) as http_port:
        fc = forwarding_client(client, server, ["-R", f"0:{HOST}:{http_port}"])
        port = _allocated(fc)
        assert ALLOCATED_RE.search(fc.stderr()).group(2) == f"{HOST}:{http_port}"  # type: ignore[union-attr]
        assert 0 < port < 65536 and _listening(port, False)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: fetch(port, "big.bin" if i % 2 else
                                                     "index.html"), range(12)))
        want_big = hashlib.sha256(pattern(3 << 20)).digest()
        for i, got in enumerate(results):
            assert (hashlib.sha256(got).digest() == want_big) if i % 2 else got == body
        assert fc.stop() == 0
        assert wait_for(lambda: not _listening(port, False), 15)


def test_half_close_both_ways(
        server: Server, make_client: Callable[..., Client],
        forwarding_client: Callable[..., ForwardingClient]) -> None:
    """The connecting side's EOF reaches the target (which only answers after it),
    and the target's answer and EOF come back: a half-close in both directions.
    Also a download before the upload, through the same connection."""
    client = make_client(server.backend, trust=server)
    with sink_server(download=200_000) as sink_port:
        fc = forwarding_client(client, server, ["-R", f"0:{HOST}:{sink_port}"])
        port = _allocated(fc)
        payload = pattern(1 << 20)
        def why() -> str:
            return f"client:\n{fc.stderr()}\nserver:\n{server.log()}"

        answer = _hashed_exchange(port, payload, why)
        assert answer[:200_000] == pattern(200_000)
        assert answer[200_000:] == \
            f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
        # an empty upload: EOF right away still gets the answer
        assert _hashed_exchange(port, b"", why)[200_000:] == \
            f"0 {hashlib.sha256(b'').hexdigest()}\n".encode()
        assert fc.stop() == 0


def test_target_down_closes_the_connection(
        server: Server, make_client: Callable[..., Client],
        forwarding_client: Callable[..., ForwardingClient]) -> None:
    """The client cannot reach the forward's target: it refuses that one channel
    (ChannelOpenFailure), the server closes the accepted connection, the forward
    stays up."""
    client = make_client(server.backend, trust=server)
    dead = free_port()
    fc = forwarding_client(client, server, ["-R", f"0:{HOST}:{dead}"])
    port = _allocated(fc)
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.settimeout(30)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    assert fc.wait_stderr(f"connect to {HOST}:{dead} failed")
    assert wait_for(lambda: "the client refused" in server.log(), 10), server.log()
    assert _listening(port, False)
    assert fc.stop() == 0


def test_refused_by_server_policy(
        tmp_path: Path, server_backend: str, authorized_keys: Path,
        make_client: Callable[..., Client]) -> None:
    """-disable-remote-forwarding: the listen request gets ChannelOpenFailure(1) with a
    reason; the client warns and runs its command (ExitOnForwardFailure=no), or exits
    255 before running anything with ExitOnForwardFailure=yes. The server logs the
    refusal with the user and the source address, and keeps serving."""
    with policy_server(tmp_path, server_backend, authorized_keys,
                       ["-disable-remote-forwarding"]) as server:
        client = make_client(server_backend, trust=server)
        port = free_port()
        result = client.run(server, "echo still-ran", extra_args=["-R", f"{port}:{HOST}:9"])
        err = result.stderr.decode()
        assert result.returncode == 0, err
        assert result.stdout == b"still-ran\n"
        assert f"remote port forwarding failed for listen port {port}" in err
        assert "administratively prohibited" in err
        assert not _listening(port, False)
        log = server.log()
        assert re.search(rf"remote forward listen on .*:{port} for {USER} from "
                         rf"127\.0\.0\.1 \d+ refused: remote forwarding is disabled", log), log

        marker = tmp_path / "marker"
        result = client.run(server, f"touch {marker}",
                            extra_args=["-o", "ExitOnForwardFailure=yes",
                                        "-R", f"{port}:{HOST}:9"])
        assert result.returncode == 255
        assert "administratively prohibited" in result.stderr.decode()
        assert not marker.exists()
        # -L still works on that server: only remote forwarding is off
        assert client.run(server, "echo ok").stdout == b"ok\n"


def test_bind_address_needs_gateway_ports(
        tmp_path: Path, server_backend: str, authorized_keys: Path,
        make_client: Callable[..., Client],
        forwarding_client: Callable[..., ForwardingClient]) -> None:
    """-R *:PORT:... binds every interface only with the server's -gateway-ports;
    without it the listener is on loopback (sshd's GatewayPorts no)."""
    for extra, want_any in (([], False), (["-gateway-ports"], True)):
        with policy_server(tmp_path / f"gw{want_any}", server_backend, authorized_keys,
                           extra) as server:
            client = make_client(server_backend, trust=server)
            port = free_port()
            fc = forwarding_client(client, server, ["-R", f"*:{port}:{HOST}:9"],
                                   tcp_ports=(port,))
            assert _bound_addresses(port) and \
                ("0.0.0.0" in _bound_addresses(port)) == want_any, _bound_addresses(port)
            assert fc.stop() == 0


def _bound_addresses(port: int) -> set[str]:
    """IPv4 addresses listening on `port` (from /proc/net/tcp)."""
    found = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if int(hexport, 16) == port and fields[3] == "0A":
                found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def test_bad_spec_is_a_usage_error() -> None:
    from ssh3_client.cli import UsageError, parse_args

    for bad in ("8080", "8080:/tmp/sock", "70000:h:1", "1:h:0", "x:h:1", "1::2"):
        with pytest.raises(UsageError, match="-R"):
            parse_args(["-R", bad, "host"])
    assert len(parse_args(["-R", "0:h:1", "-R2:h:3", "host"]).remote_forwards) == 2


@pytest.mark.parametrize("text,bind,port,host,hport", [
    ("8080:localhost:80", "localhost", 8080, "localhost", 80),
    ("0:127.0.0.1:80", "localhost", 0, "127.0.0.1", 80),
    ("*:8080:h:1", "*", 8080, "h", 1),
    (":8080:h:1", "*", 8080, "h", 1),
    ("[::1]:8080:[::1]:22", "::1", 8080, "::1", 22),
])
def test_parse_remote_forward(text: str, bind: str, port: int, host: str,
                              hport: int) -> None:
    from ssh3_client.reverse_forwarding import parse_remote_forward

    spec = parse_remote_forward(text)
    assert (spec.bind, spec.port, spec.target_host, spec.target_port) == \
        (bind, port, host, hport)


def test_remote_forward_from_ssh_config(tmp_path: Path) -> None:
    """`RemoteForward [bind:]port host:hostport` in the config adds to -R (OpenSSH);
    ClearAllForwardings=yes drops them all, those of the command line too."""
    from ssh3_client.cli import parse_args
    from ssh3_client.config import ConfigError, apply_to_args

    config = tmp_path / "config"
    config.write_text("Host h\n  RemoteForward 0 127.0.0.1:80\n"
                      "  RemoteForward *:8080 [::1]:22\n"
                      "Host bad\n  RemoteForward 8080\n"
                      "Host clear\n  RemoteForward 1 h:2\n  ClearAllForwardings yes\n")
    args = parse_args(["-F", str(config), "-R", "9:x:10", "h"])
    apply_to_args(args)
    assert [(s.bind, s.port, s.target_host, s.target_port) for s in args.remote_forwards] == \
        [("localhost", 9, "x", 10), ("localhost", 0, "127.0.0.1", 80), ("*", 8080, "::1", 22)]
    with pytest.raises(ConfigError, match="RemoteForward"):
        apply_to_args(parse_args(["-F", str(config), "bad"]))
    args = parse_args(["-F", str(config), "-R", "9:x:10", "clear"])
    apply_to_args(args)
    assert args.remote_forwards == []
