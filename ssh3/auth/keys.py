"""Loading SSH private keys and describing public keys (PROTOCOL.md §2.4.2, §7.4).

Only the key types the SSH3 JWT scheme can use are accepted: Ed25519, ECDSA on
P-256/P-384, and RSA.  Everything else is refused up front so that a client
never builds a token the server cannot verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

# Private key files are a few KiB at most; the cap keeps a mistaken path
# (a log file, /dev/zero) from being slurped whole.
MAX_KEY_FILE_SIZE = 1 << 20

_OPENSSH_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_END = b"-----END OPENSSH PRIVATE KEY-----"
_OPENSSH_MAGIC = b"openssh-key-v1\x00"


class KeyLoadError(Exception):
    """A private key file could not be turned into a usable key."""


class PassphraseRequired(KeyLoadError):
    """The key file is encrypted and no passphrase was supplied."""


class WrongPassphrase(KeyLoadError):
    """The supplied passphrase does not decrypt the key file."""


def _describe_key(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    name = type(key).__name__
    # cryptography's concrete classes are private (e.g. "DSAPrivateKey" via a
    # Rust type); strip the suffix to get a readable algorithm name.
    for suffix in ("PrivateKey", "PublicKey"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _openssh_cipher(data: bytes) -> str | None:
    """Cipher name recorded in the clear in an OpenSSH key, or None if unreadable.

    Reading it up front lets us tell "needs a passphrase" apart from "corrupt"
    without depending on the wording of cryptography's exceptions.
    """
    start = data.find(_OPENSSH_BEGIN)
    end = data.find(_OPENSSH_END, start)
    if start < 0 or end < 0:
        return None
    body = b"".join(data[start + len(_OPENSSH_BEGIN) : end].split())
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not blob.startswith(_OPENSSH_MAGIC):
        return None
    pos = len(_OPENSSH_MAGIC)
    if len(blob) < pos + 4:
        return None
    n = int.from_bytes(blob[pos : pos + 4], "big")
    if n > 64 or len(blob) < pos + 4 + n:
        return None
    try:
        return blob[pos + 4 : pos + 4 + n].decode("ascii")
    except UnicodeDecodeError:
        return None


def _is_encrypted(data: bytes) -> bool | None:
    """True/False when the container format says so, None when it cannot tell (DER)."""
    if _OPENSSH_BEGIN in data:
        cipher = _openssh_cipher(data)
        return None if cipher is None else cipher != "none"
    if b"-----BEGIN" in data:
        return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data
    return None


def _check_supported(key: object, path: str) -> PrivateKey:
    if isinstance(key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1 | ec.SECP384R1
    ):
        return key
    raise KeyLoadError(f"{path}: unsupported key type {_describe_key(key)}")


def load_private_key(path: str, passphrase: bytes | None = None) -> PrivateKey:
    """Load an OpenSSH, PKCS#1, PKCS#8 or SEC1 private key from *path*.

    A passphrase given for an unencrypted key is ignored, so callers can pass
    one passphrase to several identities.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_SIZE + 1)
    except OSError as e:
        raise KeyLoadError(f"cannot read {path}: {e.strerror or e}") from e
    if len(data) > MAX_KEY_FILE_SIZE:
        raise KeyLoadError(f"{path}: file too large to be a private key")

    is_openssh = _OPENSSH_BEGIN in data

    def load(pw: bytes | None) -> object:
        if is_openssh:
            return serialization.load_ssh_private_key(data, pw)
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, pw)
        return serialization.load_der_private_key(data, pw)

    encrypted = _is_encrypted(data)
    key: object = None
    try:
        if encrypted is None:
            # DER does not say whether it is encrypted: probe without a
            # passphrase.  cryptography raises TypeError exactly for "this key
            # needs a password", so junk still ends up as "not a key" below
            # rather than as a wrong passphrase.
            try:
                key = load(None)
                encrypted = False
            except TypeError:
                encrypted = True
        if encrypted and passphrase is None:
            raise PassphraseRequired(f"{path}: key is encrypted, a passphrase is required")
        if encrypted and is_openssh and not _have_bcrypt():
            # cryptography delegates OpenSSH's bcrypt KDF to the optional
            # bcrypt package; say so instead of a misleading "wrong passphrase".
            raise KeyLoadError(f"{path}: decrypting OpenSSH keys needs the 'bcrypt' package")
        if key is None:
            # A passphrase given for an unencrypted key is dropped, not an error.
            key = load(passphrase if encrypted else None)
    except KeyLoadError:
        raise
    except UnsupportedAlgorithm as e:
        raise KeyLoadError(f"{path}: unsupported key: {e}") from e
    except (ValueError, TypeError) as e:
        if encrypted:
            raise WrongPassphrase(f"{path}: wrong passphrase (or corrupt key)") from e
        raise KeyLoadError(f"{path}: not a valid private key: {e}") from e
    return _check_supported(key, path)


def _have_bcrypt() -> bool:
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        return False
    return True


def jwt_algorithm(key: object) -> str:
    """JWS ``alg`` for a private or public key, as the Go client chooses it (§2.4.2)."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "ES256"
        if isinstance(key.curve, ec.SECP384R1):
            return "ES384"
    raise KeyLoadError(f"no JWT algorithm for key type {_describe_key(key)}")


def _as_public(key: object) -> object:
    # Accepting private keys too saves callers a .public_key() at every site.
    if isinstance(
        key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ):
        return key.public_key()
    return key


def public_key_openssh(public_key: object) -> str:
    """The ``authorized_keys`` form of a key, without comment: ``ssh-ed25519 AAAA...``."""
    key = _as_public(public_key)
    try:
        encoded = key.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    except (AttributeError, ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyLoadError(f"cannot encode key type {_describe_key(key)}") from e
    return encoded.decode("ascii")


def public_key_fingerprint(public_key: object) -> str:
    """OpenSSH ``SHA256:`` fingerprint, as printed by ``ssh-keygen -l``."""
    blob = base64.b64decode(public_key_openssh(public_key).split()[1])
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


__all__ = [
    "KeyLoadError",
    "MAX_KEY_FILE_SIZE",
    "PassphraseRequired",
    "PrivateKey",
    "PublicKey",
    "WrongPassphrase",
    "jwt_algorithm",
    "load_private_key",
    "public_key_fingerprint",
    "public_key_openssh",
]
