"""UDP forwarding end to end: a real dnsmasq on 127.0.0.1 queried with dnspython
through `ssh3 -N -forward-udp`, a UDP service that answers with a requested size
(oversized datagrams in both directions), and the server's policy flag."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest
from e2e_helpers import (
    BACKEND_PAIRS,
    HOST,
    USER,
    library_params,
    run_async,
    stop_process,
    wait_for,
)
from services import udp_service
from test_e2e_forward_tcp import (  # shared helpers, not tests
    free_port,
    policy_server,
)

ANSWER = "10.1.2.3"
QUERIES = 1000


# ---------------------------------------------------------------------- services


def _free_dns_port() -> int:
    """dnsmasq cannot take port 0: a port free for both UDP and TCP (it binds both)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port for dnsmasq")


def query(port: int, name: str, sock: socket.socket | None = None,
          timeout: float = 3.0) -> str:
    q = dns.message.make_query(name, dns.rdatatype.A)
    r = dns.query.udp(q, HOST, port=port, timeout=timeout, sock=sock)
    assert r.question[0].name == q.question[0].name
    return r.answer[0][0].address


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real dnsmasq answering every *.example.test with 10.1.2.3; yields its port."""
    program = shutil.which("dnsmasq") or (
        "/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
    if program is None:
        pytest.fail("dnsmasq is not installed: the UDP forwarding tests need a real DNS "
                    "server (Debian: apt-get install dnsmasq; .ci/run installs it)")
    log = tmp_path_factory.mktemp("dnsmasq") / "dnsmasq.log"
    port = _free_dns_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [program, "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1",
             "--bind-interfaces", "--no-resolv", "--no-hosts",
             f"--address=/example.test/{ANSWER}", "--pid-file=", "--log-facility=-",
             # as root it would switch to "nobody"; stay who we are
             *(["--user=root"] if os.geteuid() == 0 else [])],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        def answers() -> bool:
            if proc.poll() is not None:
                return True
            with contextlib.suppress(Exception):
                return query(port, "ready.example.test", timeout=0.3) == ANSWER
            return False

        assert wait_for(answers, 15) and proc.poll() is None, log.read_text()
        yield port
    finally:
        stop_process(proc)


def _sized_reply(data: bytes) -> bytes | None:
    if len(data) < 4:
        return None
    size = struct.unpack("!I", data[:4])[0]
    return (data[:4] * (size // 4 + 1))[:size]


def sized_reply_server() -> contextlib.AbstractContextManager[int]:
    """UDP: a request starting with a 4-byte big-endian length gets a reply of that
    many bytes (each reply's first 4 bytes repeat the request's)."""
    return udp_service(_sized_reply)


def ask(sock: socket.socket, port: int, size: int, pad: int = 0) -> bytes | None:
    sock.sendto(struct.pack("!I", size) + b"\0" * pad, (HOST, port))
    try:
        return sock.recv(65535)
    except TimeoutError:
        return None


# ---------------------------------------------------------------------- fixtures


# ---------------------------------------------------------------------- tests


@pytest.mark.parametrize(("server_backend", "client_backend"), BACKEND_PAIRS)
def test_dns_through_forward_udp(start_server, make_client, forwarding_client, dnsmasq,
                                 server_backend, client_backend):
    """1,000 DNS queries, all answered: half from one socket (one flow), half each
    from a fresh source port (one direct-udp channel per query, beyond the 64-flow cap
    and the servers' ~100 stream limit, so closed flows must give their streams back)."""
    server = start_server(server_backend)
    client = make_client(client_backend, trust=server)
    port = free_port(socket.SOCK_DGRAM)
    fc = forwarding_client(client, server, [f"-forward-udp={port}/127.0.0.1@{dnsmasq}"],
                           udp_ports=(port,))
    retries = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as one_flow:
        one_flow.bind((HOST, 0))
        for i in range(QUERIES):
            sock = one_flow if i % 2 else None
            # UDP may lose a datagram (so may QUIC datagrams): a resolver asks again
            for attempt in range(3):
                try:
                    assert query(port, f"q{i}.example.test", sock, timeout=2) == ANSWER, i
                    break
                except dns.exception.Timeout:
                    retries += 1
                    if attempt == 2:
                        raise
    assert retries <= 5, f"{retries} queries had to be repeated"
    assert fc.stop() == 0, fc.stderr()
    assert fc.stderr() == ""
    assert f"direct-udp for {USER} from {HOST}" in server.log()


def test_oversized_datagrams_are_dropped_both_ways(server, make_client, forwarding_client):
    """Too big for one QUIC datagram: dropped (and said once) by the client going up,
    dropped by the server coming back; the flow goes on either way."""
    client = make_client(server.backend, trust=server)
    with sized_reply_server() as target, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        port = free_port(socket.SOCK_DGRAM)
        fc = forwarding_client(client, server, [f"-forward-udp={port}/127.0.0.1@{target}"],
                               udp_ports=(port,))
        sock.bind((HOST, 0))
        sock.settimeout(5)
        assert ask(sock, port, 100) == struct.pack("!I", 100) * 25
        sock.settimeout(1)
        assert ask(sock, port, 10, pad=1500) is None  # a 1504-byte request
        assert fc.wait_stderr("dropped a 1504-byte datagram"), fc.stderr()
        assert ask(sock, port, 3000) is None  # a 3000-byte reply
        sock.settimeout(5)
        for size in (1, 500, 1000):
            assert ask(sock, port, size) == (struct.pack("!I", size) * 250)[:size]
        assert fc.stop() == 0


def test_early_datagrams_are_kept(server, user_key):
    """Datagrams sent in the same instant as the channel header (they can overtake
    it) are all delivered: the reference would keep only the last one (Q10)."""
    from ssh3.aio.client import establish, open_connection

    params = library_params(server, user_key, server.backend)

    async def scenario(target: int) -> None:
        async with open_connection(params) as proto:
            conv = await establish(proto, params)
            got: asyncio.Queue[bytes] = asyncio.Queue()
            channel = conv.open_channel("direct-udp", address=(HOST, target))
            conv.set_datagram_handler(channel.channel_id, got.put_nowait)
            for n in range(5):
                assert conv.send_datagram(channel.channel_id, struct.pack("!I", 8 + n))
            replies = {len(await asyncio.wait_for(got.get(), 10)) for _ in range(5)}
            assert replies == {8, 9, 10, 11, 12}

    with sized_reply_server() as target:
        run_async(scenario(target), timeout=30)


def test_disable_udp_forwarding(tmp_path, authorized_keys, make_client, forwarding_client,
                                dnsmasq):
    with policy_server(tmp_path, "qh3", authorized_keys,
                       ["-disable-udp-forwarding"]) as server:
        client = make_client("aioquic", trust=server)
        port = free_port(socket.SOCK_DGRAM)
        fc = forwarding_client(client, server, [f"-forward-udp={port}/127.0.0.1@{dnsmasq}"],
                               udp_ports=(port,))
        with pytest.raises(dns.exception.Timeout):
            query(port, "refused.example.test", timeout=1)
        assert fc.wait_stderr(f"forwarding to 127.0.0.1:{dnsmasq} failed: administratively "
                              "prohibited"), fc.stderr()
        assert fc.stop() == 0
        assert wait_for(lambda: f"for {USER} from {HOST}" in server.log()
                        and "UDP forwarding is disabled" in server.log(), 5), server.log()
