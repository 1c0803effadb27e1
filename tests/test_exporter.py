"""The TLS 1.3 exporter behind the conversation ID (PROTOCOL.md §1.6, §2.4.2, §10.4)."""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path

import pytest
from aioquic.tls import hkdf_expand_label as aioquic_hkdf
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from OpenSSL import SSL
from quic_pair import Pair, certificate

from ssh3 import connection as c
from ssh3 import exporter
from ssh3.backends import get_backend

HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}


def hkdf_expand_label(algorithm: hashes.HashAlgorithm, secret: bytes, label: bytes,
                      context: bytes, length: int) -> bytes:
    """RFC 8446 §7.1 HKDF-Expand-Label, written out independently of ssh3.exporter."""
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + struct.pack("!B", len(context)) \
        + context
    return HKDFExpand(algorithm=algorithm, length=length, info=info).derive(secret)


def tls_exporter(algorithm: hashes.HashAlgorithm, exporter_master_secret: bytes,
                 label: bytes, length: int) -> bytes:
    """RFC 8446 §7.5 TLS-Exporter with an empty context."""
    empty = hashes.Hash(algorithm)
    empty_hash = empty.finalize()
    derived = hkdf_expand_label(algorithm, exporter_master_secret, label, empty_hash,
                                algorithm.digest_size)
    return hkdf_expand_label(algorithm, derived, b"exporter", empty_hash, length)


@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
@pytest.mark.parametrize("length", [32, 1, 100])
@pytest.mark.parametrize("label", [exporter.EXPORTER_LABEL, b"EXPORTER-other"])
def test_export_keying_material_matches_rfc8446(hash_name: str, length: int,
                                                label: bytes) -> None:
    algorithm = HASHES[hash_name]
    for seed in range(3):
        secret = hashlib.new(hash_name, b"exporter master %d" % seed).digest()
        expected = tls_exporter(algorithm, secret, label, length)
        assert exporter.export_keying_material(secret, label, length) == expected


def test_hkdf_expand_label_matches_aioquic() -> None:
    """A second independent implementation: aioquic's own key schedule helper."""
    for hash_name, algorithm in HASHES.items():
        secret = hashlib.new(hash_name, b"s").digest()
        ours = exporter._hkdf_expand_label(hash_name, secret, b"exporter", b"ctx", 77)
        assert ours == aioquic_hkdf(algorithm, secret, b"exporter", b"ctx", 77)


def test_export_keying_material_is_hash_specific() -> None:
    secret = bytes(range(48))
    assert (exporter.export_keying_material(secret[:32], b"EXPORTER-SSH3", 32)
            != exporter.export_keying_material(secret, b"EXPORTER-SSH3", 32)[:32])


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"])
def test_export_keying_material_matches_openssl(tmp_path: Path, suite: str) -> None:
    """Known answer from OpenSSL (pyOpenSSL is an aioquic dependency): a TLS 1.3
    handshake through memory BIOs, its EXPORTER_SECRET from the key log, and OpenSSL's
    own exporter with no context (as Go's nil)."""
    cert, key = certificate(tmp_path)
    secrets: dict[str, bytes] = {}

    def keylog(_conn: object, line: bytes) -> None:
        name, _random, value = line.split()
        secrets[name.decode()] = bytes.fromhex(value.decode())

    def context(server: bool) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        if not hasattr(ctx, "set_tls13_ciphersuites"):
            pytest.skip("pyOpenSSL too old to choose TLS 1.3 cipher suites")
        ctx.set_tls13_ciphersuites(suite.encode())
        if server:
            ctx.use_certificate_file(cert)
            ctx.use_privatekey_file(key)
        else:
            ctx.set_keylog_callback(keylog)
        return ctx

    server = SSL.Connection(context(True))
    server.set_accept_state()
    client = SSL.Connection(context(False))
    client.set_connect_state()
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    assert client.get_cipher_name() == suite
    openssl = client.export_keying_material(exporter.EXPORTER_LABEL, 32)
    assert openssl == server.export_keying_material(exporter.EXPORTER_LABEL, 32)
    # §1.6: in TLS 1.3 no context and an empty context are the same
    assert openssl == client.export_keying_material(exporter.EXPORTER_LABEL, 32, b"")
    ems = secrets["EXPORTER_SECRET"]
    assert len(ems) == (32 if suite.endswith("SHA256") else 48)
    assert exporter.export_keying_material(ems, exporter.EXPORTER_LABEL, 32) == openssl


def test_protocol_md_example_conversation_id() -> None:
    """§1.6 / §2.4.2: the jti is standard base64 with padding, 44 characters."""
    example = "7H5cy/nTXAJ/nsOpHmbW7k0YEHdQbQuUJuWg/C+hXuM="
    raw = base64.b64decode(example, validate=True)
    assert len(raw) == exporter.CONVERSATION_ID_LENGTH == 32
    assert raw.hex().startswith("ec7e5ccb")
    assert base64.b64encode(raw).decode() == example


def test_install_is_idempotent() -> None:
    for name in ("aioquic", "qh3"):
        backend = get_backend(name)
        wrapped = backend.tls_module.Context._setup_traffic_protection
        assert wrapped._ssh3_wrapped
        exporter.install(backend.tls_module)
        assert backend.tls_module.Context._setup_traffic_protection is wrapped


@pytest.mark.parametrize("name", ["aioquic", "qh3"])
def test_no_conversation_id_before_handshake(tmp_path: Path, name: str) -> None:
    pair = Pair(tmp_path, name)
    assert exporter.conversation_id(pair.client.quic) is None
    assert exporter.conversation_id(pair.server.quic) is None


@pytest.mark.parametrize(
    ("client_backend", "server_backend"),
    [("aioquic", "aioquic"), ("qh3", "qh3"), ("aioquic", "qh3"), ("qh3", "aioquic")],
)
def test_both_ends_agree_on_conversation_id(tmp_path: Path, client_backend: str,
                                            server_backend: str) -> None:
    # aioquic client -> qh3 server: qh3 2.1.0 fails to build its first flight once and
    # recovers by retransmission (see quic_pair.QH3_FIRST_FLIGHT_ERROR)
    pair = Pair(tmp_path, client_backend, server_backend,
                tolerate_send_errors=client_backend != server_backend).handshake()
    client_id = exporter.conversation_id(pair.client.quic)
    server_id = exporter.conversation_id(pair.server.quic)
    assert client_id is not None and len(client_id) == 32
    assert client_id == server_id
    assert [e.conversation_id for e in pair.client.of(c.HandshakeCompleted)] == [client_id]
    assert [e.conversation_id for e in pair.server.of(c.HandshakeCompleted)] == [client_id]
    assert len(base64.b64encode(client_id)) == 44
    # the captured secret is the size of the negotiated hash
    secret = getattr(pair.client.quic.tls, exporter._ATTR)
    assert len(secret) in (32, 48)
    assert secret == getattr(pair.server.quic.tls, exporter._ATTR)


def test_certificate_helper_reuses_files(tmp_path: Path) -> None:
    first = certificate(tmp_path)
    assert certificate(tmp_path) == first
