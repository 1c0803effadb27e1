"""Verification against trusted roots (a CA-signed server needs no TOFU), and the
client accepting such a server without asking."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from e2e_helpers import _LISTEN_RE, Server, find_program

from ssh3.certs import verify_chain


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_leaf(tmp: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path, bytes]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    leaf = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    bundle, cert, keyfile = tmp / "ca.pem", tmp / "leaf.pem", tmp / "leaf.key"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return bundle, cert, keyfile, leaf.public_bytes(serialization.Encoding.DER)


def test_ca_signed_certificate_verifies(tmp_path: Path) -> None:
    bundle, _, _, der = make_ca_and_leaf(tmp_path)
    assert verify_chain(der, [], "127.0.0.1", str(bundle)) is None


def test_wrong_name_or_untrusted_root_is_explained(tmp_path: Path) -> None:
    bundle, _, _, der = make_ca_and_leaf(tmp_path)
    assert verify_chain(der, [], "192.0.2.1", str(bundle)) is not None
    other = tmp_path / "other"
    other.mkdir()
    other_bundle, _, _, _ = make_ca_and_leaf(other)
    assert verify_chain(der, [], "127.0.0.1", str(other_bundle)) is not None


def test_client_accepts_a_ca_signed_server_without_asking(tmp_path, authorized_keys,
                                                          make_client) -> None:
    bundle, cert, key, _ = make_ca_and_leaf(tmp_path)
    srv = Server(tmp_path / "srv", "aioquic", authorized_keys)
    srv.workdir.mkdir()
    # give the server the CA-signed pair instead of a generated one
    srv.cert.write_bytes(cert.read_bytes())
    srv.key.write_bytes(key.read_bytes())
    proc = subprocess.Popen([find_program("ssh3-server"), "-bind", "127.0.0.1:0",
                             "-authorized-keys-file", str(authorized_keys),
                             "-cert", str(srv.cert), "-key", str(srv.key)],
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        match = None
        while match is None:
            line = proc.stderr.readline()
            assert line, "server exited"
            match = _LISTEN_RE.search(line)
        srv.port = int(match.group(2))
        client = make_client("aioquic")
        argv = client.argv(srv, "echo trusted")
        r = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                           env=client.env(SSL_CERT_FILE=str(bundle)), start_new_session=True)
        assert (r.returncode, r.stdout) == (0, b"trusted\n"), r.stderr
        assert not client.known_hosts.exists()  # nothing to remember: the CA vouches
        # without the CA bundle the same server is unknown and not self-signed: refused
        r = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                           env=client.env(SSL_CERT_FILE=str(tmp_path / "nothing.pem")),
                           start_new_session=True)
        assert r.returncode == 255 and b"does not verify" in r.stderr, r.stderr
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()
