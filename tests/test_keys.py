"""Private key loading and public key rendering (ssh3.auth.keys)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from ssh3.auth.keys import (
    KeyLoadError,
    PassphraseRequired,
    WrongPassphrase,
    jwt_algorithm,
    load_private_key,
    public_key_fingerprint,
    public_key_openssh,
)

SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
needs_keygen = pytest.mark.skipif(
    not Path(SSH_KEYGEN).exists(), reason="ssh-keygen not available"
)

try:
    import bcrypt  # noqa: F401

    HAVE_BCRYPT = True
except ImportError:
    HAVE_BCRYPT = False

EXAMPLE_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"


def keygen(path: Path, key_type: str, passphrase: str = "", bits: int | None = None,
           fmt: str | None = None) -> Path:
    cmd = [SSH_KEYGEN, "-q", "-t", key_type, "-N", passphrase, "-C", "test@host", "-f", str(path)]
    if bits is not None:
        cmd += ["-b", str(bits)]
    if fmt is not None:
        cmd += ["-m", fmt]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return path


def write_pem(path: Path, key: object, fmt: serialization.PrivateFormat,
              password: bytes | None = None) -> Path:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, fmt, enc)  # type: ignore[attr-defined]
    )
    return path


# --- OpenSSH files made by ssh-keygen -------------------------------------------------


@needs_keygen
@pytest.mark.parametrize(
    ("key_type", "bits", "cls", "alg"),
    [
        ("ed25519", None, ed25519.Ed25519PrivateKey, "EdDSA"),
        ("ecdsa", 256, ec.EllipticCurvePrivateKey, "ES256"),
        ("ecdsa", 384, ec.EllipticCurvePrivateKey, "ES384"),
        ("rsa", 2048, rsa.RSAPrivateKey, "RS256"),
    ],
)
def test_load_openssh_keys(tmp_path: Path, key_type: str, bits: int | None, cls: type,
                           alg: str) -> None:
    path = keygen(tmp_path / "id", key_type, bits=bits)
    key = load_private_key(str(path))
    assert isinstance(key, cls)
    assert jwt_algorithm(key) == alg
    assert jwt_algorithm(key.public_key()) == alg

    pub_line = (tmp_path / "id.pub").read_text().split()
    assert public_key_openssh(key.public_key()) == " ".join(pub_line[:2])
    # ssh-keygen -l prints "<bits> SHA256:... comment (TYPE)".
    listed = subprocess.run(
        [SSH_KEYGEN, "-l", "-f", str(tmp_path / "id.pub")],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.split()[1]
    assert public_key_fingerprint(key.public_key()) == listed
    # A private key is accepted where a public one is expected.
    assert public_key_fingerprint(key) == listed


@needs_keygen
def test_passphrase_given_for_unencrypted_key_is_ignored(tmp_path: Path) -> None:
    path = keygen(tmp_path / "id", "ed25519")
    assert isinstance(load_private_key(str(path), b"whatever"), ed25519.Ed25519PrivateKey)


@needs_keygen
def test_encrypted_openssh_key_requires_passphrase(tmp_path: Path) -> None:
    path = keygen(tmp_path / "id", "ed25519", passphrase="secret")
    with pytest.raises(PassphraseRequired):
        load_private_key(str(path))


@needs_keygen
def test_encrypted_openssh_key_wrong_and_right_passphrase(tmp_path: Path) -> None:
    path = keygen(tmp_path / "id", "ed25519", passphrase="secret")
    if not HAVE_BCRYPT:
        # Without bcrypt the KDF is unavailable; that must not look like a
        # wrong passphrase.
        with pytest.raises(KeyLoadError, match="bcrypt") as info:
            load_private_key(str(path), b"secret")
        assert not isinstance(info.value, WrongPassphrase)
        return
    with pytest.raises(WrongPassphrase):
        load_private_key(str(path), b"wrong")
    key = load_private_key(str(path), b"secret")
    assert isinstance(key, ed25519.Ed25519PrivateKey)


@needs_keygen
def test_encrypted_pkcs1_from_ssh_keygen(tmp_path: Path) -> None:
    path = keygen(tmp_path / "id", "rsa", passphrase="secret1", bits=2048, fmt="PEM")
    assert b"Proc-Type: 4,ENCRYPTED" in path.read_bytes()
    with pytest.raises(PassphraseRequired):
        load_private_key(str(path))
    with pytest.raises(WrongPassphrase):
        load_private_key(str(path), b"nope")
    assert isinstance(load_private_key(str(path), b"secret1"), rsa.RSAPrivateKey)


@needs_keygen
def test_unsupported_openssh_curve_is_named(tmp_path: Path) -> None:
    path = keygen(tmp_path / "id", "ecdsa", bits=521)
    with pytest.raises(KeyLoadError, match="secp521r1"):
        load_private_key(str(path))


# --- PEM / DER files ---------------------------------------------------------------


def _all_keys() -> list[tuple[str, object]]:
    return [
        ("ed25519", ed25519.Ed25519PrivateKey.generate()),
        ("p256", ec.generate_private_key(ec.SECP256R1())),
        ("p384", ec.generate_private_key(ec.SECP384R1())),
        ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ]


@pytest.mark.parametrize(("name", "key"), _all_keys(), ids=["ed25519", "p256", "p384", "rsa"])
def test_load_pkcs8_pem_and_der(tmp_path: Path, name: str, key: object) -> None:
    pem = write_pem(tmp_path / f"{name}.pem", key, serialization.PrivateFormat.PKCS8)
    loaded = load_private_key(str(pem))
    assert public_key_openssh(loaded) == public_key_openssh(key)

    der = tmp_path / f"{name}.der"
    der.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert public_key_openssh(load_private_key(str(der))) == public_key_openssh(key)


def test_load_pkcs1_and_sec1(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = write_pem(tmp_path / "rsa.pem", rsa_key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert pkcs1.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert isinstance(load_private_key(str(pkcs1)), rsa.RSAPrivateKey)

    ec_key = ec.generate_private_key(ec.SECP256R1())
    sec1 = write_pem(tmp_path / "ec.pem", ec_key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert sec1.read_text().startswith("-----BEGIN EC PRIVATE KEY-----")
    loaded = load_private_key(str(sec1))
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert jwt_algorithm(loaded) == "ES256"


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8,
                                 serialization.PrivateFormat.TraditionalOpenSSL])
def test_encrypted_pem(tmp_path: Path, fmt: serialization.PrivateFormat) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    path = write_pem(tmp_path / "k.pem", key, fmt, password=b"secret")
    with pytest.raises(PassphraseRequired):
        load_private_key(str(path))
    with pytest.raises(WrongPassphrase):
        load_private_key(str(path), b"wrong")
    assert public_key_openssh(load_private_key(str(path), b"secret")) == public_key_openssh(key)


def test_encrypted_der_requires_passphrase(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "k.der"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(PassphraseRequired):
        load_private_key(str(path))
    with pytest.raises(WrongPassphrase):
        load_private_key(str(path), b"wrong")
    assert isinstance(load_private_key(str(path), b"secret"), ed25519.Ed25519PrivateKey)


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (ed448.Ed448PrivateKey.generate(), "Ed448"),
        (ec.generate_private_key(ec.SECP521R1()), "secp521r1"),
        (ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
        (dsa.generate_private_key(key_size=2048), "DSA"),
    ],
    ids=["ed448", "p521", "secp256k1", "dsa"],
)
def test_unsupported_key_types_are_named(tmp_path: Path, key: object, name: str) -> None:
    path = write_pem(tmp_path / "k.pem", key, serialization.PrivateFormat.PKCS8)
    with pytest.raises(KeyLoadError, match=name) as info:
        load_private_key(str(path))
    assert not isinstance(info.value, PassphraseRequired | WrongPassphrase)
    with pytest.raises(KeyLoadError):
        jwt_algorithm(key)


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"this is not a key\n")
    with pytest.raises(KeyLoadError) as info:
        load_private_key(str(garbage))
    assert type(info.value) is KeyLoadError
    # A passphrase must not turn "not a key" into "wrong passphrase".
    with pytest.raises(KeyLoadError) as info:
        load_private_key(str(garbage), b"pw")
    assert type(info.value) is KeyLoadError

    with pytest.raises(KeyLoadError, match="cannot read"):
        load_private_key(str(tmp_path / "missing"))

    public_only = tmp_path / "id.pub"
    public_only.write_text(EXAMPLE_PUB + " x\n")
    with pytest.raises(KeyLoadError):
        load_private_key(str(public_only))


def test_exception_hierarchy() -> None:
    assert issubclass(PassphraseRequired, KeyLoadError)
    assert issubclass(WrongPassphrase, KeyLoadError)


def test_example_key_rendering() -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    assert public_key_openssh(key.public_key()) == EXAMPLE_PUB
    fp = public_key_fingerprint(key.public_key())
    assert fp.startswith("SHA256:") and "=" not in fp and len(fp) == 7 + 43


def test_jwt_algorithm_rejects_non_keys() -> None:
    with pytest.raises(KeyLoadError):
        jwt_algorithm(object())
