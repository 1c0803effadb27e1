"""Proxy jump end to end: `ssh3 -J jump target cmd` with real ssh3-servers on
127.0.0.1 (a jump host and a target on other ports), on both QUIC backends.

What is asserted comes from the servers' logs: the target sees the connection
coming from the jump host's UDP socket, and the jump host sees only a direct-udp
channel (no session: it cannot read the inner connection)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from e2e_helpers import (
    BACKEND_PAIRS,
    BACKENDS,
    HOST,
    USER,
    PtyProcess,
    Server,
    exec_on,
    library_params,
    make_key,
    run_async,
    sha256,
    wait_for,
)

_UDP_RE = re.compile(r"direct-udp for (\S+) from \S+ \d+ to ([\d.]+):(\d+) "
                     r"\(channel \d+, local port (\d+)\)")
_SESSION_RE = re.compile(r"ssh3\.server: session \d+")


def _other(backend: str) -> str:
    return BACKENDS[1 - BACKENDS.index(backend)]


def relayed_ports(jump: Server, target: Server) -> list[int]:
    """The local ports of the jump host's UDP sockets towards `target`."""
    return [int(m.group(4)) for m in _UDP_RE.finditer(jump.log())
            if m.group(3) == str(target.port)]


def conversation_sources(server: Server) -> list[int]:
    return [int(p) for p in re.findall(
        rf"conversation \d+ for {re.escape(USER)} from {re.escape(HOST)}:(\d+) started",
        server.log())]


def assert_relayed(jump: Server, target: Server) -> None:
    """`target` was reached from `jump`'s UDP socket, and `jump` ran no session."""
    ports = relayed_ports(jump, target)
    assert ports, f"no direct-udp to the target in the jump host's log:\n{jump.log()}"
    assert set(conversation_sources(target)) & set(ports), (
        f"the target's conversation does not come from the jump host's socket {ports}:\n"
        f"{target.log()}")
    assert not _SESSION_RE.search(jump.log()), f"a session ran on the jump host:\n{jump.log()}"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- basic jump


@pytest.mark.parametrize("jump_backend,client_backend", BACKEND_PAIRS)
def test_command_runs_on_target_through_jump(start_server, make_client, jump_backend,
                                             client_backend):
    jump = start_server(jump_backend, name="jump")
    target = start_server(_other(jump_backend), name="target")
    client = make_client(client_backend, trust=jump)
    client.trust(target)
    proc = client.run(target, "echo on-target; exit 7",
                      extra_args=["-J", f"{HOST}:{jump.port}"])
    assert proc.returncode == 7, proc.stderr.decode()
    assert proc.stdout == b"on-target\n"
    assert_relayed(jump, target)
    assert re.search(r"session \d+: exec b'echo on-target; exit 7'", target.log())
    # a clean end: the inner connection's CONNECTION_CLOSE went through the jump host
    # before the outer connection closed (no idle timeout on either server)
    for server in (target, jump):
        assert wait_for(lambda s=server: re.search(
            r"conversation \d+ for \S+ ended: connection closed \(0x100", s.log()), 10), \
            server.log()


def test_proxy_jump_flag_with_path_and_user(start_server, make_client):
    """The reference's -proxy-jump, with user and path in the hop."""
    jump = start_server("aioquic", url_path="/jump-secret", name="jump")
    target = start_server("qh3", name="target")
    client = make_client("aioquic", trust=jump)
    client.trust(target)
    proc = client.run(target, "echo via-flag",
                      extra_args=["-proxy-jump", f"{USER}@{HOST}:{jump.port}/jump-secret"])
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"via-flag\n"
    assert_relayed(jump, target)


@pytest.mark.parametrize("client_backend", BACKENDS)
def test_chain_of_two_jumps(start_server, make_client, client_backend):
    first = start_server("aioquic", name="jump1")
    second = start_server("qh3", name="jump2")
    target = start_server(client_backend, name="target")
    client = make_client(client_backend, trust=first)
    client.trust(second)
    client.trust(target)
    proc = client.run(target, "echo end-of-chain",
                      extra_args=["-J", f"{HOST}:{first.port},{HOST}:{second.port}"])
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"end-of-chain\n"
    assert_relayed(first, second)
    assert_relayed(second, target)
    # the first jump host relays only to the second, never to the target itself
    assert not relayed_ports(first, target)


# ---------------------------------------------------------------------- configuration


def _write_config(client, text: str) -> None:
    ssh = client.home / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "config").write_text(text)


@pytest.mark.parametrize("keyword", ["ProxyJump", "UDPProxyJump"])
def test_config_proxy_jump(start_server, make_client, keyword):
    jump = start_server("qh3", url_path="/hop-path", name="jump")
    target = start_server("aioquic", name="target")
    client = make_client("qh3", trust=jump)
    client.trust(target)
    # the hop's alias gets its HostName, Port and URLPath from the config
    _write_config(client, f"""\
IgnoreUnknown URLPath,UDPProxyJump
Host tgt
    HostName {HOST}
    Port {target.port}
    {keyword} hop
Host hop
    HostName {HOST}
    Port {jump.port}
    URLPath /hop-path
""")
    argv = client.argv(target, ["echo", "from-config"])
    argv[argv.index(target.target())] = "tgt"
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                          env=client.env(), timeout=60, start_new_session=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"from-config\n"
    assert_relayed(jump, target)

    # -J none on the command line wins over the config: a direct connection
    before = len(relayed_ports(jump, target))
    proc = subprocess.run([*argv[:1], "-J", "none", *argv[1:]], stdin=subprocess.DEVNULL,
                          capture_output=True, env=client.env(), timeout=60,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(relayed_ports(jump, target)) == before


def test_each_hop_has_its_own_identity(tmp_path: Path, start_server, make_client,
                                       user_key: Path):
    """The jump host accepts only a second key, named by IdentityFile for the hop's
    alias; the target accepts only the -i key."""
    other_key = make_key(tmp_path / "keys2", "id_jump")
    jump_keys = tmp_path / "jump_authorized_keys"
    jump_keys.write_bytes(other_key.with_name("id_jump.pub").read_bytes())
    jump_keys.chmod(0o600)
    jump = Server(tmp_path / "jump-own-key", "aioquic", jump_keys)
    jump.start()
    try:
        target = start_server("qh3", name="target")
        client = make_client("aioquic", trust=jump)
        client.trust(target)
        proc = client.run(target, "echo two-keys", extra_args=["-J", f"{HOST}:{jump.port}"])
        assert proc.returncode == 255
        assert f"jump host {HOST}:{jump.port}" in proc.stderr.decode()
        assert "authentication refused" in proc.stderr.decode()

        _write_config(client, f"Host {HOST}\n    IdentityFile {other_key}\n")
        proc = client.run(target, "echo two-keys", extra_args=["-J", f"{HOST}:{jump.port}"])
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout == b"two-keys\n"
        assert_relayed(jump, target)
    finally:
        assert not jump.stop()


def test_each_hop_has_its_own_known_hosts_entry(start_server, make_client):
    jump = start_server("aioquic", name="jump")
    target = start_server("aioquic", name="target")
    client = make_client("aioquic", trust=target)  # the jump host is unknown
    proc = client.run(target, "true", extra_args=["-J", f"{HOST}:{jump.port}",
                                                  "-o", "StrictHostKeyChecking=yes"])
    assert proc.returncode == 255
    assert f"no certificate known for {HOST}:{jump.port}/ssh3-term" in proc.stderr.decode()
    assert "direct-udp" not in jump.log()

    # accept-new records the hop under its own host:port/path
    proc = client.run(target, "echo ok", extra_args=["-J", f"{HOST}:{jump.port}",
                                                     "-o", "StrictHostKeyChecking=accept-new"])
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"{HOST}:{jump.port}/ssh3-term " in client.known_hosts.read_text()


# ---------------------------------------------------------------------- failures


@pytest.mark.parametrize("client_backend", BACKENDS)
def test_jump_host_refusing_udp(start_server, make_client, tmp_path, authorized_keys,
                                client_backend):
    jump = Server(tmp_path / "jump-no-udp", client_backend, authorized_keys,
                  extra_args=["-disable-udp-forwarding"])
    jump.start()
    try:
        target = start_server("aioquic", name="target")
        client = make_client(client_backend, trust=jump)
        client.trust(target)
        started = time.monotonic()
        proc = client.run(target, "true", extra_args=["-J", f"{HOST}:{jump.port}"],
                          timeout=30)
        elapsed = time.monotonic() - started
        err = proc.stderr.decode()
        assert proc.returncode == 255
        assert f"jump host {HOST}:{jump.port} cannot carry the connection to " \
               f"{HOST}:{target.port}" in err
        assert "UDP forwarding is disabled" in err
        # refused at once, not after a handshake timeout (15 s)
        assert elapsed < 10, elapsed
        assert "conversation" not in target.log().split("listening on", 1)[1]
    finally:
        assert not jump.stop()


def test_jump_host_not_answering(make_client, server):
    client = make_client("aioquic", trust=server)
    dead = free_udp_port()
    proc = client.run(server, "true", extra_args=["-J", f"{HOST}:{dead}",
                                                  "-o", "ConnectTimeout=2"], timeout=30)
    assert proc.returncode == 255
    err = proc.stderr.decode()
    # nothing listens: the ICMP port-unreachable ends the attempt at once
    assert f"jump host {HOST}:{dead}: connect to host {HOST} port {dead}: " \
           "Connection refused" in err, err
    # one clean line: no asyncio noise about the abandoned handshake
    assert "Future exception" not in err and "Traceback" not in err, err


def test_target_not_answering_behind_jump(start_server, make_client, tmp_path,
                                          authorized_keys):
    jump = start_server("aioquic", name="jump")
    client = make_client("aioquic", trust=jump)
    dead = free_udp_port()
    ghost = Server(tmp_path / "ghost", "aioquic", authorized_keys, port=dead)
    proc = client.run(ghost, "true", extra_args=["-J", f"{HOST}:{jump.port}",
                                                 "-o", "ConnectTimeout=3"], timeout=30)
    assert proc.returncode == 255
    err = proc.stderr.decode()
    assert f"no answer from {HOST} port {dead} through jump host {HOST}:{jump.port}" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------- heavier use


@pytest.mark.parametrize("client_backend", BACKENDS)
def test_five_mib_through_jump(start_server, make_client, client_backend):
    jump = start_server(client_backend, name="jump")
    target = start_server(_other(client_backend), name="target")
    client = make_client(client_backend, trust=jump)
    client.trust(target)
    data = os.urandom(5 << 20)
    proc = client.run(target, "cat", input=data, timeout=120,
                      extra_args=["-J", f"{HOST}:{jump.port}"])
    assert proc.returncode == 0, proc.stderr.decode()
    assert sha256(proc.stdout) == sha256(data)
    proc = client.run(target, "sha256sum", input=data, timeout=120,
                      extra_args=["-J", f"{HOST}:{jump.port}"])
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.split()[0].decode() == sha256(data)
    assert_relayed(jump, target)


def test_pty_session_through_jump(start_server, make_client):
    jump = start_server("qh3", name="jump")
    target = start_server("aioquic", name="target")
    client = make_client("aioquic", trust=jump)
    client.trust(target)
    term = PtyProcess(client.argv(target, None, extra_args=["-J", f"{HOST}:{jump.port}"]),
                      client.env(TERM="xterm"), rows=24, cols=80)
    try:
        term.write(b"echo READY$((40+2)) $(tty)\r")
        term.expect(rb"READY42 /dev/pts/\d+")
        term.write(b"exit 3\r")
        assert term.wait() == 3
    finally:
        term.close()
    assert_relayed(jump, target)


# ---------------------------------------------------------------------- library level


@pytest.mark.parametrize("outer,inner", BACKEND_PAIRS)
def test_library_jump_closes_cleanly(start_server, user_key, outer, inner):
    """ConnectParams(via=conversation): the inner connection closes before the
    outer one, the jump host's channel is let go, and no task is left behind."""
    from ssh3.aio.client import establish, open_connection

    jump = start_server(outer, name="jump")
    target = start_server(inner, name="target")

    async def main() -> None:
        before = asyncio.all_tasks()
        jump_params = library_params(jump, user_key, outer)
        jump_params.max_datagram_size = 1352
        async with open_connection(jump_params) as jump_protocol:
            jump_conv = await establish(jump_protocol, jump_params)
            params = library_params(target, user_key, inner)
            params.via, params.via_label = jump_conv, "the jump"
            async with open_connection(params) as protocol:
                conv = await establish(protocol, params)
                out, _, status = await exec_on(conv.open_channel("session"), b"echo lib")
                assert (out, status) == (b"lib\n", 0)
                channels = [c for c in jump_protocol.channels.values()
                            if c.channel_type == "direct-udp"]
                assert len(channels) == 1
            # the tunnel's channel was let go with the inner connection
            assert not [c for c in jump_protocol.channels.values()
                        if c.channel_type == "direct-udp"]
            assert not jump_protocol.terminated.is_set()
            jump_conv.close()
        await asyncio.sleep(0)
        leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
        assert not leftover, leftover

    run_async(main())
    assert_relayed(jump, target)


def test_library_jump_conversation_lost(start_server, user_key):
    """The jump host goes away: the inner connection ends at once with a reason
    naming the jump host, instead of waiting for its idle timeout."""
    from ssh3.aio.client import establish, open_connection

    jump = start_server("aioquic", name="jump")
    target = start_server("aioquic", name="target")

    async def main() -> str:
        jump_params = library_params(jump, user_key, "aioquic")
        jump_params.max_datagram_size = 1352
        async with open_connection(jump_params) as jump_protocol:
            jump_conv = await establish(jump_protocol, jump_params)
            params = library_params(target, user_key, "aioquic")
            params.via, params.via_label = jump_conv, "jumpy"
            async with open_connection(params) as protocol:
                await establish(protocol, params)
                jump_conv.close("test")
                await asyncio.wait_for(protocol.terminated.wait(), 5)
                assert protocol.termination is not None
                return protocol.termination.reason

    reason = run_async(main())
    assert "jump host jumpy" in reason


def test_library_jump_connection_too_small(start_server, user_key):
    """A jump connection whose packets cannot hold an inner packet is refused at
    once with the sizes, instead of a handshake that times out."""
    from ssh3.aio.client import SSH3ClientError, establish, open_connection

    jump = start_server("aioquic", name="jump")
    target = start_server("aioquic", name="target")

    async def main() -> str:
        jump_params = library_params(jump, user_key, "aioquic")  # 1200-byte packets
        async with open_connection(jump_params) as jump_protocol:
            jump_conv = await establish(jump_protocol, jump_params)
            params = library_params(target, user_key, "aioquic")
            params.via, params.via_label = jump_conv, "small"
            with pytest.raises(SSH3ClientError) as info:
                async with open_connection(params):
                    pass
            assert not jump_protocol.channels  # no channel was opened
            return str(info.value)

    message = run_async(main(), timeout=10)
    assert "jump host small: one QUIC datagram on that connection carries at most" in message
    assert "needs 1200-byte packets" in message
    assert "direct-udp" not in jump.log()


@pytest.mark.parametrize("backend", BACKENDS)
def test_library_connect_with_tunnel(start_server, user_key, backend):
    """`ssh3.connect(target, tunnel="jump1,jump2")`: like `ssh3 -J`, one key and one
    known_hosts for every hop; closing the connection closes the jump hosts' too."""
    import ssh3

    first = start_server("aioquic", name="jump1")
    second = start_server("qh3", name="jump2")
    target = start_server(backend, name="target")

    async def main() -> None:
        async with ssh3.connect(target.target(), client_keys=[str(user_key)],
                                known_hosts=[first.der, second.der, target.der],
                                backend=backend,
                                tunnel=f"{USER}@{first.target()},{second.target()}") as conn:
            result = await conn.run("echo tunnelled")
            assert (result.returncode, result.stdout) == (0, "tunnelled\n")
        # a hop whose certificate is not accepted is named in the error
        with pytest.raises(ssh3.HostKeyError, match=rf"jump host {USER}@{HOST}:{first.port}"):
            async with ssh3.connect(target.target(), client_keys=[str(user_key)],
                                    known_hosts=[target.der], backend=backend,
                                    tunnel=first.target()):
                pass

    run_async(main())
    assert_relayed(first, second)
    assert_relayed(second, target)
    for server in (first, second, target):
        assert wait_for(lambda s=server: re.search(
            r"conversation \d+ for \S+ ended: connection closed \(0x100", s.log()), 10), \
            server.log()
