"""Roaming: a session survives a change of the client's address/port (QUIC
connection migration), as mosh users expect. A UDP relay between the real `ssh3`
and a real `ssh3-server` plays a NAT that rebinds: mid-session its outbound socket
is replaced, so the server suddenly sees the client at a new port, and the old one
is gone. Both QUIC backends, the same on both sides."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import subprocess
import threading

import pytest
from e2e_helpers import BACKENDS, HOST, find_program, known_hosts_line, stop_process


class NatRelay:
    """Client ↔ relay ↔ server, in a thread. `rebind()` swaps the upstream socket
    (a new source port towards the server) and closes the old one."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.listener.bind((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.upstream = self._new_upstream()
        self.client: tuple[str, int] | None = None
        self.ports_used = [self.upstream.getsockname()[1]]
        self.answers_on_new_port = 0  # server datagrams received after the rebind
        self._rebind = threading.Event()
        self._rebound = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nat-relay", daemon=True)
        self._thread.start()

    def _new_upstream(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        return sock

    def _run(self) -> None:
        rebound = False
        while not self._stop.is_set():
            if self._rebind.is_set():
                old, self.upstream = self.upstream, self._new_upstream()
                old.close()
                self.ports_used.append(self.upstream.getsockname()[1])
                self._rebind.clear()
                rebound = True
                self._rebound.set()
            ready, _, _ = select.select([self.listener, self.upstream], [], [], 0.05)
            for sock in ready:
                try:
                    data, addr = sock.recvfrom(65536)
                except OSError:
                    continue
                if sock is self.listener:
                    self.client = addr
                    self.upstream.sendto(data, self.target)
                elif self.client is not None:
                    if rebound:
                        self.answers_on_new_port += 1
                    self.listener.sendto(data, self.client)

    def rebind(self, timeout: float = 5.0) -> None:
        self._rebound.clear()
        self._rebind.set()
        assert self._rebound.wait(timeout), "the relay did not rebind"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        self.upstream.close()


def _read_line(fd: int, timeout: float = 15.0) -> bytes:
    """One line from `fd` (event-driven: select, no sleeps)."""
    out = b""
    while not out.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"no line within {timeout} s; got {out!r}"
        chunk = os.read(fd, 1)
        assert chunk, f"EOF; got {out!r}"
        out += chunk
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_session_survives_nat_rebinding(start_server, make_client, backend):
    server = start_server(backend)
    client = make_client(backend)
    relay = NatRelay((HOST, server.port))
    client.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    client.known_hosts.write_text(known_hosts_line(relay.port, server.der))
    argv = [find_program("ssh3"), "-i", str(client.key), "-quic-backend", backend,
            f"{HOST}:{relay.port}{server.url_path}", "cat"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=client.env(), start_new_session=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"before the move\n")
        proc.stdin.flush()
        assert _read_line(proc.stdout.fileno()) == b"before the move\n"
        relay.rebind()  # the server now sees the client at another port
        for i in range(3):
            proc.stdin.write(f"after the move {i}\n".encode())
            proc.stdin.flush()
            assert _read_line(proc.stdout.fileno()) == f"after the move {i}\n".encode()
        assert relay.answers_on_new_port > 0  # the server answered the new address
        relay.rebind()  # and once more
        proc.stdin.write(b"second move\n")
        proc.stdin.flush()
        assert _read_line(proc.stdout.fileno()) == b"second move\n"
        proc.stdin.close()
        assert proc.wait(15) == 0, proc.stderr.read() if proc.stderr else b""
        assert len(set(relay.ports_used)) == 3
        assert "conversation" in server.log() and server.log().count(" started") == 1
    finally:
        stop_process(proc)
        relay.close()


async def _echo(channel, text: bytes) -> bytes:
    from ssh3.messages import ChannelData

    await channel.write(text)
    got = b""
    while not got.endswith(b"\n"):
        msg = await channel.read()
        assert msg is not None, f"channel ended; got {got!r}"
        if isinstance(msg, ChannelData):
            got += msg.data
    return got


@pytest.mark.parametrize("backend", BACKENDS)
def test_session_survives_client_socket_change(start_server, user_key, backend):
    """The client itself moves: a new UDP socket (new port) is swapped into the
    protocol's transport mid-session, the old one closed."""
    from e2e_helpers import library_params, run_async

    from ssh3.aio.client import establish, open_connection
    from ssh3.messages import ExecRequest, ExitStatusRequest

    server = start_server(backend)
    params = library_params(server, user_key, backend)

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        ports = []
        async with open_connection(params) as protocol:
            conv = await establish(protocol, params)
            channel = conv.open_channel("session")
            channel.send(ExecRequest(b"cat"))
            ports.append(protocol._transport.get_extra_info("sockname")[1])
            assert await _echo(channel, b"before\n") == b"before\n"
            old = protocol._transport
            # same family as the library's socket (aioquic: dual-stack "::", addresses
            # IPv4-mapped), a new port
            family = old.get_extra_info("socket").family
            new_sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                new_sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            new_sock.bind(("::" if family == socket.AF_INET6 else HOST, 0))
            new_transport, _ = await loop.create_datagram_endpoint(lambda: protocol,
                                                                   sock=new_sock)
            old.close()
            try:
                ports.append(protocol._transport.get_extra_info("sockname")[1])
                for i in range(3):
                    line = f"after {i}\n".encode()
                    assert await _echo(channel, line) == line
                channel.send_eof()
                while True:
                    msg = await channel.read()
                    assert msg is not None
                    if isinstance(msg, ExitStatusRequest):
                        assert msg.exit_status == 0
                        break
            finally:
                protocol.close_now()
                new_transport.close()
        return ports

    ports = run_async(scenario(), timeout=60)
    assert ports[0] != ports[1]
