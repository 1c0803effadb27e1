"""OpenSSH user certificates for SSH3 public-key logins (docs/certificates.md).

The client puts the certificate blob (what a ``-cert.pub`` file holds after its type
word, base64) into the JWT header as ``ssh3-cert`` and signs the token with the
certified key. The server checks the certificate like sshd does for a
``TrustedUserCAKeys`` file or a ``cert-authority`` line, then verifies the token with
the key the certificate certifies. cryptography parses the certificate and checks
its signature; the policy (type, CA, validity, principals, options) is here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificate,
    SSHCertificateType,
    load_ssh_public_identity,
)

from .jwt_token import CERT_HEADER as HEADER_FIELD
from .key_lines import key_line_blob
from .key_options import match_source_address
from .keys import PublicKey

CERT_SUFFIX = "-cert-v01@openssh.com"
# a certificate with an RSA-4096 key and CA is about 1.7 KiB
MAX_CERT_SIZE = 4096
FOREVER = (1 << 64) - 1  # valid_before of `ssh-keygen -V always`
KNOWN_CRITICAL_OPTIONS = frozenset({"force-command", "source-address"})


class CertificateError(Exception):
    """The certificate was not accepted; the message is short and safe to log."""


@dataclass(frozen=True)
class CertificateGrant:
    """A certificate that passed every check: what it certifies and allows."""

    public_key: PublicKey
    key_id: str
    serial: int
    ca_fingerprint: str
    force_command: str | None
    permit_pty: bool
    permit_port_forwarding: bool
    permit_agent_forwarding: bool

    def describe(self) -> str:
        return f"cert id={self.key_id!r} serial={self.serial} ca={self.ca_fingerprint}"


def key_blob(key: object) -> bytes:
    """The SSH wire blob of a public key (for comparing keys)."""
    line = key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)  # type: ignore[attr-defined]
    return base64.b64decode(line.split()[1])


def fingerprint_of_blob(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _blob_type(blob: bytes) -> str:
    if len(blob) < 4:
        return ""
    n = int.from_bytes(blob[:4], "big")
    try:
        return blob[4 : 4 + n].decode("ascii") if 0 < n <= 64 and len(blob) >= 4 + n else ""
    except UnicodeDecodeError:
        return ""


def parse_certificate_blob(blob: bytes) -> SSHCertificate:
    """An OpenSSH certificate from its wire blob; CertificateError if it is not one."""
    if len(blob) > MAX_CERT_SIZE:
        raise CertificateError("certificate too large")
    key_type = _blob_type(blob)
    if not key_type.endswith(CERT_SUFFIX):
        raise CertificateError("not an OpenSSH certificate")
    line = key_type.encode() + b" " + base64.b64encode(blob)
    try:
        cert = load_ssh_public_identity(line)
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError("malformed certificate") from None
    if not isinstance(cert, SSHCertificate):
        raise CertificateError("not an OpenSSH certificate")
    return cert


def certificate_blob_of_text(text: bytes) -> bytes | None:
    """The blob of a ``-cert.pub`` file (``type base64 [comment]``), None if it is none."""
    blob = key_line_blob(text)
    if blob is None or not _blob_type(blob).endswith(CERT_SUFFIX):
        return None
    return blob


def certified_key_blob(cert_blob: bytes) -> bytes | None:
    """The blob of the key a certificate certifies (None if unparsable)."""
    try:
        return key_blob(parse_certificate_blob(cert_blob).public_key())
    except CertificateError:
        return None


def encode_header_value(cert_blob: bytes) -> str:
    """The ``ssh3-cert`` header value: standard base64 with padding, like the
    base64 field of a ``-cert.pub`` file."""
    return base64.b64encode(cert_blob).decode("ascii")


def decode_header_value(value: object) -> bytes:
    if not isinstance(value, str) or len(value) > MAX_CERT_SIZE * 2:
        raise CertificateError("malformed ssh3-cert header")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CertificateError("malformed ssh3-cert header") from None


def _usable_key(key: object) -> PublicKey:
    if isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(
            key.curve, ec.SECP256R1 | ec.SECP384R1):
        return key
    raise CertificateError("certified key type cannot sign an SSH3 token")


def check_certificate(cert_blob: bytes, *, user: str, client_address: str,
                      trusted_cas: Mapping[bytes, Collection[str]],
                      now: float | None = None) -> CertificateGrant:
    """Check a user certificate for a login as *user* from *client_address*.

    *trusted_cas* maps each trusted CA key blob to the principal names a certificate
    of it must include one of: the user for TrustedUserCAKeys or a cert-authority
    line without ``principals=``, the line's list otherwise (a union when several
    lines name the same CA). Raises CertificateError.
    """
    cert = parse_certificate_blob(cert_blob)
    if cert.type != SSHCertificateType.USER:
        raise CertificateError("not a user certificate")
    ca_blob = key_blob(cert.signature_key())
    if ca_blob not in trusted_cas:
        raise CertificateError(f"CA {fingerprint_of_blob(ca_blob)} is not trusted")
    try:
        cert.verify_cert_signature()
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        raise CertificateError("bad CA signature") from None
    now = time.time() if now is None else now
    # sshd: valid iff valid_after <= now < valid_before
    if now < cert.valid_after:
        raise CertificateError("certificate not yet valid")
    if cert.valid_before != FOREVER and now >= cert.valid_before:
        raise CertificateError("certificate expired")
    principals = [p.decode("utf-8", "replace") for p in cert.valid_principals]
    # sshd lets a cert-authority certificate without principals log in as anyone;
    # we refuse it (docs/certificates.md)
    if not principals:
        raise CertificateError("certificate names no principal")
    allowed = trusted_cas[ca_blob]
    if not any(p in allowed for p in principals):
        raise CertificateError(f"certificate principals do not include {user!r}"
                               if user in allowed else
                               "certificate principals not allowed by principals=")
    critical = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                for k, v in cert.critical_options.items()}
    unknown = sorted(set(critical) - KNOWN_CRITICAL_OPTIONS)
    if unknown:
        raise CertificateError(f"unsupported critical option {unknown[0]!r}")
    if "source-address" in critical and not match_source_address(critical["source-address"],
                                                                  client_address):
        raise CertificateError("source-address does not allow this client")
    extensions = {k.decode("utf-8", "replace") for k in cert.extensions}
    return CertificateGrant(
        public_key=_usable_key(cert.public_key()),
        key_id=cert.key_id.decode("utf-8", "replace"),
        serial=cert.serial,
        ca_fingerprint=fingerprint_of_blob(ca_blob),
        force_command=critical.get("force-command"),
        # no extension means not permitted, as in sshd
        permit_pty="permit-pty" in extensions,
        permit_port_forwarding="permit-port-forwarding" in extensions,
        permit_agent_forwarding="permit-agent-forwarding" in extensions,
    )


def load_trusted_ca_file(path: str) -> tuple[set[bytes], list[str]]:
    """CA keys of a ``TrustedUserCAKeys``-style file (one public key per line); the
    keys and ``path:line: reason`` warnings for lines that are not keys."""
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    keys: set[bytes] = set()
    warnings: list[str] = []
    with open(path, "rb") as f:
        data = f.read(1 << 20)
    for number, line in enumerate(data.split(b"\n"), start=1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        fields = line.split()
        try:
            key = load_ssh_public_key(b" ".join(fields[:2]))
        except (ValueError, UnsupportedAlgorithm, IndexError):
            warnings.append(f"{path}:{number}: not a public key")
            continue
        keys.add(key_blob(key))
    return keys, warnings


def check_trusted_ca_file(path: str) -> bool:
    """At server start: False (with the reason on stderr) if *path* cannot be read;
    warnings for lines that are not keys, or for a file without any key."""
    import sys

    try:
        keys, warnings = load_trusted_ca_file(path)
    except OSError as exc:
        print(f"ssh3-server: -trusted-user-ca-keys: {exc}", file=sys.stderr)
        return False
    for warning in warnings:
        print(f"ssh3-server: warning: {warning}", file=sys.stderr)
    if not keys:
        print(f"ssh3-server: warning: {path} holds no CA key", file=sys.stderr)
    return True


__all__ = [
    "CERT_SUFFIX",
    "HEADER_FIELD",
    "CertificateError",
    "CertificateGrant",
    "certificate_blob_of_text",
    "certified_key_blob",
    "check_trusted_ca_file",
    "check_certificate",
    "decode_header_value",
    "encode_header_value",
    "fingerprint_of_blob",
    "key_blob",
    "load_trusted_ca_file",
    "parse_certificate_blob",
]
