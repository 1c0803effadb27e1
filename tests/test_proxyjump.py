"""Proxy jump without the network: jump lists, per-hop configuration, packet sizes."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from ssh3.aio.jump import (
    CARRIED_PACKET_SIZE,
    HOP_OVERHEAD,
    INNER_PACKET_SIZE,
    MAX_PACKET_SIZE,
    hop_backend,
    hop_packet_size,
)
from ssh3_client.cli import parse_args
from ssh3_client.config import apply_to_args
from ssh3_client.proxyjump import (
    HopSpec,
    JumpSpecError,
    connect_timeout,
    jump_list_of,
    parse_hop,
    parse_jump_list,
    prepare,
    remember_command_line,
)


def test_parse_jump_list():
    assert parse_jump_list("none") == []
    assert parse_jump_list("NONE") == []
    hops = parse_jump_list("alice@b.example:4443/secret, c")
    assert hops == [HopSpec("alice@b.example:4443/secret", "b.example", "alice", 4443, "/secret"),
                    HopSpec("c", "c", None, None, None)]
    assert parse_hop("[::1]:443").alias == "::1"
    for bad in ("a,,b", "a:notaport", "a:0", "a:70000", "ftp://a", ","):
        with pytest.raises(JumpSpecError):
            parse_jump_list(bad)
    with pytest.raises(JumpSpecError, match="too many"):
        parse_jump_list(",".join(["h"] * 9))


def test_packet_sizes_grow_per_hop():
    assert hop_packet_size(0) == INNER_PACKET_SIZE == 1200
    # a hop's datagram must hold a whole packet of the connection it carries
    assert hop_packet_size(1) >= CARRIED_PACKET_SIZE + HOP_OVERHEAD
    assert hop_packet_size(2) == hop_packet_size(1) + HOP_OVERHEAD
    # two jumps still fit what quic-go reads (1452)
    assert hop_packet_size(2) <= MAX_PACKET_SIZE
    # ssh3.connection reserves 64 bytes of framing, plus up to 8 for the two varints
    assert HOP_OVERHEAD >= 64 + 8


def test_qh3_hops_that_outgrow_its_initial_use_aioquic():
    pytest.importorskip("qh3")
    assert hop_backend("qh3", hop_packet_size(1)) == "qh3"
    assert hop_backend("qh3", hop_packet_size(2)) == "aioquic"
    assert hop_backend("aioquic", hop_packet_size(2)) == "aioquic"


def test_connect_timeout():
    assert connect_timeout({}) == 15.0
    assert connect_timeout({"connecttimeout": "2.5"}) == 2.5
    # one parser for hops and direct connections: "none" and 0 mean no limit
    assert connect_timeout({"connecttimeout": "none"}) is None
    assert connect_timeout({"connecttimeout": "0"}) is None
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(JumpSpecError):
            connect_timeout({"connecttimeout": bad})


def _args(argv: list[str], config: Path) -> object:
    args = parse_args(["-F", str(config), *argv])
    remember_command_line(args)
    apply_to_args(args)
    return args


def test_hops_take_their_own_configuration(tmp_path: Path):
    config = tmp_path / "config"
    config.write_text("""\
Host target
    HostName 10.0.0.9
    User tuser
    Port 4000
    URLPath /target-path
    IdentityFile /keys/target
    ProxyJump hop1,bob@hop2:555
Host hop1
    HostName 192.0.2.1
    User hopper
    URLPath /hop-path
    IdentityFile /keys/hop1
    IdentityAgent none
""")
    args = _args(["-i", "/keys/cli", "-o", "BatchMode=yes", "target", "true"], config)
    assert jump_list_of(args) == "hop1,bob@hop2:555"
    first, second = prepare(args)
    assert (first.host, first.port, first.path, first.user) == \
        ("192.0.2.1", 443, "/hop-path", "hopper")
    # the command line's keys, then the hop's own; never the destination's
    assert first.args.identities == ["/keys/cli", "/keys/hop1"]
    assert first.args.options["identityagent"] == "none"
    assert first.args.options["batchmode"] == "yes"
    assert (second.host, second.port, second.path, second.user) == \
        ("hop2", 555, "/ssh3-term", "bob")
    assert second.args.identities == ["/keys/cli"]
    assert "identityagent" not in second.args.options
    assert first.label == "192.0.2.1:443/hop-path"
    # the destination keeps its own settings
    assert (args.hostname, args.port, args.url_path, args.user) == \
        ("10.0.0.9", 4000, "/target-path", "tuser")


def test_command_line_jump_wins_over_config(tmp_path: Path):
    config = tmp_path / "config"
    config.write_text("Host target\n    UDPProxyJump viaconfig\n")
    assert [h.host for h in prepare(_args(["target"], config))] == ["viaconfig"]
    assert [h.host for h in prepare(_args(["-J", "viaflag", "target"], config))] == ["viaflag"]
    assert prepare(_args(["-J", "none", "target"], config)) == []
    assert prepare(_args(["-o", "ProxyJump=none", "target"], config)) == []
    config.write_text("Host target\n    ProxyJump none\n")
    assert prepare(_args(["target"], config)) == []
    assert prepare(_args(["other"], config)) == []
    hop = prepare(_args(["-J", "h", "target"], config))[0]
    assert hop.user == getpass.getuser()


def test_config_no_longer_warns_about_proxyjump(tmp_path: Path):
    config = tmp_path / "config"
    config.write_text("Host target\n    ProxyJump j\n    ProxyCommand nc %h %p\n")
    args = _args(["target"], config)
    assert not any("proxyjump" in w for w in args.warnings)
    assert any("proxycommand" in w for w in args.warnings)


def test_aioquic_server_grows_its_packets_to_the_clients(tmp_path: Path):
    from quic_pair import Pair

    from ssh3.backends import get_backend

    backend = get_backend("aioquic")
    p = Pair(tmp_path, "aioquic").handshake()
    server, client = p.server.quic, p.client.quic
    assert backend.packet_size(server) == 1200
    backend.adopt_packet_size(server, 1352)
    assert backend.packet_size(server) == 1352
    backend.adopt_packet_size(server, 1300)  # never shrinks
    assert backend.packet_size(server) == 1352
    backend.adopt_packet_size(server, 9000)  # at most what quic-go reads
    assert backend.packet_size(server) == MAX_PACKET_SIZE
    backend.adopt_packet_size(client, 1400)  # a client keeps its own choice
    assert backend.packet_size(client) == 1200
    # and the bigger packets really go out: a datagram of the new limit passes
    limit = p.server.conn.max_datagram_payload(0, 4)
    assert limit > 1352 - 100
    assert p.server.conn.send_datagram(0, 4, b"z" * limit)
    p.exchange()
    assert p.client.take()[-1].payload == b"z" * limit


def test_qh3_server_starts_at_the_clients_initial_size(tmp_path: Path):
    pytest.importorskip("qh3")
    from quic_pair import _quic_class, certificate, server_configuration

    from ssh3.backends import get_backend

    backend = get_backend("qh3")
    cert, key = certificate(tmp_path)
    shared = server_configuration(backend, cert, key)
    default = shared.max_datagram_size
    quic = _quic_class(backend)(configuration=shared,
                                original_destination_connection_id=b"12345678")
    backend.adopt_packet_size(quic, 1352)
    assert quic.configuration.max_datagram_size == 1352
    assert shared.max_datagram_size == default  # other connections keep theirs
    backend.adopt_packet_size(quic, 1200)  # before the core exists: the first one counts
    assert quic.configuration.max_datagram_size == 1200
    backend.adopt_packet_size(quic, 1100)  # not an Initial a server would accept
    assert quic.configuration.max_datagram_size == 1200
