"""Server certificates: generation, loading, fingerprints and the checks the client
needs for trust on first use (PROTOCOL.md §1.5)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

# cryptography.x509 costs ~15-20 ms to import: the client imports this module on
# every run (fingerprint) but needs x509 only for a host not in known_hosts, so the
# functions that use it import it
if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "SELFSIGNED_NAME",
    "certificate_matches_name",
    "fingerprint",
    "generate_self_signed",
    "is_self_signed_ca",
    "load_certificate_der",
]

# The Go client switches its TLS ServerName to this name when a known_hosts
# certificate is valid for it, which sidesteps missing IP SANs.
SELFSIGNED_NAME = "selfsigned.ssh3"

_ORGANIZATION = "SSH3Organization"
_VALIDITY_YEARS = 10
# Tolerate a client whose clock is slightly behind ours right after generation.
_CLOCK_SKEW = datetime.timedelta(minutes=1)


def _parse_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if len(name) >= 3 and name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return None
    # Go's net.IP.Equal treats an IPv4-mapped IPv6 address as the IPv4 address.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _add_years(when: datetime.datetime, years: int) -> datetime.datetime:
    try:
        return when.replace(year=when.year + years)
    except ValueError:
        # 29 February in a non-leap target year: roll over like Go's AddDate.
        return when.replace(year=when.year + years, month=3, day=1)


def _san_entries(extra_names: list[str] | None) -> list[x509.GeneralName]:
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    seen: set[tuple[str, str]] = set()
    for name in ["*", SELFSIGNED_NAME, *(extra_names or [])]:
        name = name.strip()
        if not name:
            continue
        ip = _parse_ip(name)
        if ip is not None:
            key = ("ip", str(ip))
            entry: x509.GeneralName = x509.IPAddress(ip)
        else:
            key = ("dns", name.lower())
            entry = x509.DNSName(name)
        if key in seen:
            continue
        seen.add(key)
        entries.append(entry)
    return entries


def _build_certificate(extra_names: list[str] | None) -> tuple[x509.Certificate, bytes]:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ed25519.Ed25519PrivateKey.generate()
    public_key = key.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION)])
    now = datetime.datetime.now(datetime.UTC)
    # Same range as the reference (rand.Int below 2**128); zero is not a valid serial.
    serial = 0
    while serial == 0:
        serial = secrets.randbits(128)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(_add_years(now, _VALIDITY_YEARS))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        # Go adds a subject key identifier to every CA certificate it creates.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san_entries(extra_names)), critical=False)
    )
    cert = builder.sign(key, None)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert, key_pem


def _write_exclusive(path: str, data: bytes, mode: int) -> None:
    # O_EXCL both refuses to clobber and, for the key, guarantees the file is born
    # with restrictive permissions instead of being chmod-ed after the fact.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits we want (never added any)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def generate_self_signed(
    cert_path: str, key_path: str, extra_names: list[str] | None = None
) -> bytes:
    """Write a new self-signed Ed25519 certificate and its PKCS#8 key.

    The certificate is the one ``ssh3-server -generate-selfsigned-cert`` makes:
    CA:TRUE with keyCertSign (so the Go client accepts it for trust on first use) and
    the SANs ``*`` and ``selfsigned.ssh3``. ``extra_names`` adds SANs; IP literals
    become IP SANs. Returns the certificate in DER form.
    """
    if os.path.abspath(cert_path) == os.path.abspath(key_path):
        raise ValueError(f"certificate and key paths are the same file: {cert_path}")
    for path, what in ((cert_path, "certificate"), (key_path, "private key")):
        if os.path.lexists(path):
            raise FileExistsError(
                f"refusing to generate a self-signed certificate: the {what} file "
                f"{path} already exists (remove it or choose another path)"
            )
    cert, key_pem = _build_certificate(extra_names)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    try:
        _write_exclusive(key_path, key_pem, 0o600)
    except FileExistsError as exc:
        raise FileExistsError(
            f"refusing to generate a self-signed certificate: the private key file "
            f"{key_path} already exists"
        ) from exc
    try:
        _write_exclusive(cert_path, cert_pem, 0o644)
    except BaseException as exc:
        # Leave nothing behind so that a retry is not refused because of our own key.
        try:
            os.unlink(key_path)
        except OSError:
            pass
        if isinstance(exc, FileExistsError):
            raise FileExistsError(
                f"refusing to generate a self-signed certificate: the certificate file "
                f"{cert_path} already exists"
            ) from exc
        raise
    return cert.public_bytes(serialization.Encoding.DER)


def load_certificate_der(cert_path: str) -> bytes:
    """Return the DER of the first (leaf) certificate in a PEM file or chain.

    A file without PEM armour is read as a single DER certificate.
    """
    from cryptography import x509

    with open(cert_path, "rb") as f:
        data = f.read()
    if b"-----BEGIN" in data:
        certs = x509.load_pem_x509_certificates(data)
        if not certs:
            raise ValueError(f"{cert_path}: no certificate found")
        cert = certs[0]
    else:
        cert = x509.load_der_x509_certificate(data)
    return cert.public_bytes(serialization.Encoding.DER)


def fingerprint(der: bytes) -> str:
    """``SHA256 <base64>`` of the DER certificate, as the Go client shows it."""
    digest = hashlib.sha256(der).digest()
    return "SHA256 " + base64.b64encode(digest).decode("ascii")


# Go's CheckSignature refuses these as insecure; mirror it so we don't accept more.
_INSECURE_HASHES = (hashes.MD5, hashes.SHA1)


def _signed_by_own_key(cert: x509.Certificate) -> bool:
    public_key = cert.public_key()
    signature = cert.signature
    data = cert.tbs_certificate_bytes
    hash_alg = cert.signature_hash_algorithm
    if hash_alg is not None and isinstance(hash_alg, _INSECURE_HASHES):
        return False
    params = cert.signature_algorithm_parameters
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            public_key.verify(signature, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA):
                return False
            public_key.verify(signature, data, params)
        elif isinstance(public_key, rsa.RSAPublicKey):
            if hash_alg is None or not isinstance(params, padding.PKCS1v15 | padding.PSS):
                return False
            public_key.verify(signature, data, params, hash_alg)
        else:
            # DSA and anything exotic: Go's verifier does not accept them either.
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def is_self_signed_ca(der: bytes) -> bool:
    """Whether the certificate passes Go's ``cert.CheckSignatureFrom(cert)``.

    That is the reference client's precondition for offering trust on first use:
    CA:TRUE, keyCertSign when KeyUsage is present, and a signature made by the
    certificate's own key.
    """
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            return False
        if not bc.ca:
            return False
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            ku = None
        if ku is not None and not ku.key_cert_sign:
            return False
        return _signed_by_own_key(cert)
    except (ValueError, UnsupportedAlgorithm):
        return False


def _valid_pattern(pattern: str) -> bool:
    if pattern == "*":
        # Go ignores bare wildcards: they match no host name (RFC 6125).
        return False
    labels = pattern.split(".")
    if any(not label for label in labels):
        return False
    # A wildcard is only meaningful as the whole left-most label.
    first_ok = labels[0] == "*" or "*" not in labels[0]
    return first_ok and all("*" not in label for label in labels[1:])


def _match_dns(pattern: str, host: str) -> bool:
    pattern = pattern.lower()
    if "*" in host or not _valid_pattern(pattern):
        # Go falls back to a plain comparison when either side is not a usable name.
        return pattern == host
    if pattern == host:
        return True
    pattern_labels = pattern.split(".")
    host_labels = host.split(".")
    if pattern_labels[0] != "*" or len(pattern_labels) != len(host_labels):
        return False
    return pattern_labels[1:] == host_labels[1:] and host_labels[0] != ""


def certificate_matches_name(der: bytes, name: str) -> bool:
    """Whether the certificate's SANs cover ``name`` the way Go's VerifyHostname does.

    IP literals (optionally bracketed) are compared with IP SANs only; other names
    with DNS SANs, case-insensitively, where ``*.rest`` covers exactly one extra
    leading label. The common name is ignored, as in Go.
    """
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    ip = _parse_ip(name)
    if ip is not None:
        for candidate in san.get_values_for_type(x509.IPAddress):
            if isinstance(candidate, ipaddress.IPv6Address) and candidate.ipv4_mapped:
                candidate = candidate.ipv4_mapped
            if candidate == ip:
                return True
        return False
    host = name.lower().removesuffix(".")
    if not host:
        return False
    return any(_match_dns(pattern, host) for pattern in san.get_values_for_type(x509.DNSName))


SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                     "/etc/ssl/cert.pem")


def _default_bundle() -> str | None:
    # SSL_CERT_FILE: the variable OpenSSL and Python's ssl module honour too
    override = os.environ.get("SSL_CERT_FILE")
    if override:
        return override
    for path in SYSTEM_CA_BUNDLES:
        if os.path.exists(path):
            return path
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def verify_chain(leaf_der: bytes, chain_der: list[bytes], hostname: str,
                 bundle: str | None = None) -> str | None:
    """Verify a server certificate against the system's (or `bundle`'s) trusted roots
    for `hostname`, like a browser would. Returns None when it verifies, else why
    not (for the user-facing message)."""
    from cryptography import x509
    from cryptography.x509 import verification

    path = bundle or _default_bundle()
    if path is None:
        return "no trusted root certificates found on this system"
    try:
        with open(path, "rb") as f:
            roots = x509.load_pem_x509_certificates(f.read())
        store = verification.Store(roots)
        try:
            subject: verification.DNSName | verification.IPAddress = verification.IPAddress(
                ipaddress.ip_address(hostname.strip("[]")))
        except ValueError:
            subject = verification.DNSName(hostname)
        verifier = verification.PolicyBuilder().store(store).build_server_verifier(subject)
        leaf = x509.load_der_x509_certificate(leaf_der)
        verifier.verify(leaf, [x509.load_der_x509_certificate(d) for d in chain_der])
    except (OSError, ValueError, verification.VerificationError) as exc:
        return str(exc) or type(exc).__name__
    return None
