from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ssh3.certs import (
    certificate_matches_name,
    fingerprint,
    generate_self_signed,
    is_self_signed_ca,
    load_certificate_der,
)


@pytest.fixture
def generated(tmp_path):
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "priv.key"
    der = generate_self_signed(
        str(cert_path), str(key_path), ["example.org", "192.0.2.7", "::1", "[2001:db8::1]"]
    )
    return cert_path, key_path, der


def _build(
    key,
    *,
    ca: bool | None,
    key_cert_sign: bool | None = True,
    signer=None,
    names: list[x509.GeneralName] | None = None,
) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if key_cert_sign is not None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
    signer = signer or key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(signer, algorithm)
    return cert.public_bytes(serialization.Encoding.DER)


def test_generated_certificate_properties(generated) -> None:
    cert_path, _key_path, der = generated
    cert = x509.load_der_x509_certificate(der)
    before = datetime.datetime.now(datetime.UTC)

    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    assert 0 < cert.serial_number < 2**128
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "SSH3Organization"
    )
    assert cert.issuer == cert.subject

    assert cert.not_valid_before_utc <= before
    assert before - cert.not_valid_before_utc < datetime.timedelta(minutes=5)
    lifetime = cert.not_valid_after_utc - before
    assert datetime.timedelta(days=3650) <= lifetime <= datetime.timedelta(days=3654)

    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca

    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and ku.key_cert_sign
    assert not (ku.content_commitment or ku.data_encipherment or ku.key_agreement)
    assert not ku.crl_sign

    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["*", "selfsigned.ssh3", "example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("2001:db8::1"),
    ]

    # Self-signed: verifies with its own key and issuer.
    cert.verify_directly_issued_by(cert)
    assert load_certificate_der(str(cert_path)) == der


def test_serials_are_random(tmp_path) -> None:
    serials = set()
    for i in range(4):
        der = generate_self_signed(str(tmp_path / f"c{i}"), str(tmp_path / f"k{i}"))
        serials.add(x509.load_der_x509_certificate(der).serial_number)
    assert len(serials) == 4


def test_key_file(generated) -> None:
    _cert_path, key_path, der = generated
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    pem = key_path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    cert = x509.load_der_x509_certificate(der)
    assert key.public_key() == cert.public_key()


def test_key_mode_ignores_permissive_umask(tmp_path) -> None:
    old = os.umask(0)
    try:
        generate_self_signed(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k.pem").st_mode) == 0o600


@pytest.mark.parametrize("existing", ["cert", "key"])
def test_refuses_existing_paths(tmp_path, existing: str) -> None:
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "priv.key"
    target = cert_path if existing == "cert" else key_path
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        generate_self_signed(str(cert_path), str(key_path))
    assert target.read_bytes() == b"keep me"
    other = key_path if existing == "cert" else cert_path
    assert not other.exists()


def test_refuses_same_path(tmp_path) -> None:
    with pytest.raises(ValueError):
        generate_self_signed(str(tmp_path / "x"), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_load_first_certificate_of_chain(tmp_path) -> None:
    first = _build(ec.generate_private_key(ec.SECP256R1()), ca=True)
    second = _build(ec.generate_private_key(ec.SECP256R1()), ca=True)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(
        b"".join(
            x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM)
            for d in (first, second)
        )
    )
    assert load_certificate_der(str(chain)) == first
    der_file = tmp_path / "cert.der"
    der_file.write_bytes(second)
    assert load_certificate_der(str(der_file)) == second


def test_fingerprint_format(generated) -> None:
    _c, _k, der = generated
    fp = fingerprint(der)
    assert fp == "SHA256 " + base64.b64encode(hashlib.sha256(der).digest()).decode()
    prefix, b64 = fp.split(" ")
    assert prefix == "SHA256"
    assert len(b64) == 44 and b64.endswith("=")
    assert fingerprint(b"abc") == "SHA256 ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="


def test_is_self_signed_ca_generated(generated) -> None:
    assert is_self_signed_ca(generated[2])


@pytest.mark.parametrize(
    "make_key",
    [
        ed25519.Ed25519PrivateKey.generate,
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: rsa.generate_private_key(65537, 2048),
    ],
)
def test_is_self_signed_ca_algorithms(make_key) -> None:
    key = make_key()
    assert is_self_signed_ca(_build(key, ca=True))
    assert is_self_signed_ca(_build(key, ca=True, key_cert_sign=None))
    assert not is_self_signed_ca(_build(key, ca=False))
    assert not is_self_signed_ca(_build(key, ca=None))
    assert not is_self_signed_ca(_build(key, ca=True, key_cert_sign=False))


def test_is_self_signed_ca_rejects_foreign_signature() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    assert not is_self_signed_ca(_build(key, ca=True, signer=other))


def test_is_self_signed_ca_garbage() -> None:
    assert not is_self_signed_ca(b"not a certificate")


def test_name_matching_generated(generated) -> None:
    der = generated[2]
    assert certificate_matches_name(der, "selfsigned.ssh3")
    assert certificate_matches_name(der, "SelfSigned.SSH3.")
    assert certificate_matches_name(der, "example.org")
    assert certificate_matches_name(der, "192.0.2.7")
    assert certificate_matches_name(der, "::1")
    assert certificate_matches_name(der, "[::1]")
    assert certificate_matches_name(der, "2001:db8:0::1")
    assert certificate_matches_name(der, "::ffff:192.0.2.7")
    # The bare "*" SAN is ignored, as Go ignores it.
    assert not certificate_matches_name(der, "localhost")
    assert not certificate_matches_name(der, "other.example")
    assert not certificate_matches_name(der, "192.0.2.8")
    assert not certificate_matches_name(der, "127.0.0.1")
    assert not certificate_matches_name(der, "")


def test_name_matching_wildcards() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = _build(
        key,
        ca=True,
        names=[x509.DNSName("*.example.org"), x509.DNSName("a*.example.net")],
    )
    assert certificate_matches_name(der, "www.example.org")
    assert certificate_matches_name(der, "WWW.Example.Org")
    assert not certificate_matches_name(der, "example.org")
    assert not certificate_matches_name(der, "a.b.example.org")
    assert not certificate_matches_name(der, "ab.example.net")
    no_san = _build(key, ca=True)
    assert not certificate_matches_name(no_san, "test")
