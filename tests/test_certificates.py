"""ssh3.auth.certificates and the certificate path of ssh3_server.pubkey_check, with
certificates made by `ssh-keygen -s` (no network, no server)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from ssh3.auth.authorized_keys import parse_identities
from ssh3.auth.certificates import (
    CertificateError,
    certificate_blob_of_text,
    certified_key_blob,
    check_certificate,
    decode_header_value,
    key_blob,
    load_trusted_ca_file,
    parse_certificate_blob,
)
from ssh3.auth.jwt_token import CERT_HEADER, build_token, token_header, verify_token
from ssh3_server.permissions import Permissions
from ssh3_server.pubkey_check import PublicKeyCheck, dummy_verification

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                                reason="needs OpenSSH's ssh-keygen")

CONV = bytes(range(32))


def keygen(*args: str) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True, timeout=30,
                   stdin=subprocess.DEVNULL)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    keygen("-t", "ed25519", "-N", "", "-f", str(tmp_path / "ca"))
    return tmp_path / "ca"


def make_cert(tmp_path: Path, ca: Path, *options: str, name: str = "user",
              kind: str = "ed25519") -> tuple[Path, bytes]:
    key = tmp_path / name
    keygen("-t", kind, "-N", "", "-f", str(key))
    keygen("-s", str(ca), "-I", f"id-{name}", *options, f"{key}.pub")
    blob = certificate_blob_of_text(Path(f"{key}-cert.pub").read_bytes())
    assert blob is not None
    return key, blob


def ca_blob(ca: Path) -> bytes:
    return base64.b64decode(Path(f"{ca}.pub").read_text().split()[1])


def test_valid_certificate_and_its_extensions(tmp_path, ca):
    key, blob = make_cert(tmp_path, ca, "-n", "alice,bob", "-O", "no-port-forwarding",
                          "-z", "42")
    grant = check_certificate(blob, user="bob", client_address="127.0.0.1",
                              trusted_cas={ca_blob(ca): {"bob"}})
    assert grant.key_id == "id-user" and grant.serial == 42
    assert grant.permit_pty and grant.permit_agent_forwarding
    assert not grant.permit_port_forwarding
    assert grant.force_command is None
    assert key_blob(grant.public_key) == base64.b64decode(
        Path(f"{key}.pub").read_text().split()[1])
    assert certified_key_blob(blob) == key_blob(grant.public_key)


@pytest.mark.parametrize("options, user, reason", [
    (("-n", "alice"), "bob", "certificate principals do not include 'bob'"),
    (("-n", "alice", "-V", "20200101:20200102"), "alice", "certificate expired"),
    (("-n", "alice", "-V", "+1d:+2d"), "alice", "certificate not yet valid"),
    (("-n", "alice", "-O", "critical:foo@example.com=bar"), "alice",
     "unsupported critical option 'foo@example.com'"),
    (("-n", "alice", "-O", "source-address=10.0.0.0/8"), "alice",
     "source-address does not allow this client"),
    (("-h", "-n", "alice"), "alice", "not a user certificate"),
    ((), "alice", "certificate names no principal"),
])
def test_refused_certificates(tmp_path, ca, options, user, reason):
    _, blob = make_cert(tmp_path, ca, *options)
    with pytest.raises(CertificateError, match=f"^{reason}$"):
        check_certificate(blob, user=user, client_address="127.0.0.1",
                          trusted_cas={ca_blob(ca): {user}})


def test_untrusted_ca_and_bad_signature(tmp_path, ca):
    _, blob = make_cert(tmp_path, ca, "-n", "alice")
    with pytest.raises(CertificateError, match="is not trusted"):
        check_certificate(blob, user="alice", client_address="127.0.0.1", trusted_cas={})
    # one flipped byte in the signature (the end of the blob)
    broken = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CertificateError, match="bad CA signature|malformed"):
        check_certificate(broken, user="alice", client_address="127.0.0.1",
                          trusted_cas={ca_blob(ca): {"alice"}})


def test_garbage_is_refused_precisely():
    with pytest.raises(CertificateError, match="not an OpenSSH certificate"):
        parse_certificate_blob(b"\x00\x00\x00\x0bssh-ed25519" + b"x" * 32)
    with pytest.raises(CertificateError, match="malformed certificate"):
        parse_certificate_blob(b"\x00\x00\x00\x20ssh-ed25519-cert-v01@openssh.com" + b"x")
    with pytest.raises(CertificateError, match="too large"):
        parse_certificate_blob(b"x" * 5000)
    for value in (1, "not base64!", None):
        with pytest.raises(CertificateError, match="malformed ssh3-cert header"):
            decode_header_value(value)
    assert certificate_blob_of_text(b"ssh-ed25519 AAAA x\n") is None


def test_trusted_ca_file_warns_on_bad_lines(tmp_path, ca):
    path = tmp_path / "cas"
    path.write_text(f"# CAs\n\nnot a key\n{Path(f'{ca}.pub').read_text()}")
    keys, warnings = load_trusted_ca_file(str(path))
    assert keys == {ca_blob(ca)}
    assert warnings == [f"{path}:3: not a public key"]


def token_for(key: Path, user: str, blob: bytes | None) -> str:
    private = load_ssh_private_key(key.read_bytes(), None)
    return build_token(private, user, CONV, certificate=blob)  # type: ignore[arg-type]


def test_token_header_carries_the_certificate_and_verifies_as_before(tmp_path, ca):
    key, blob = make_cert(tmp_path, ca, "-n", "alice")
    token = token_for(key, "alice", blob)
    header_json = base64.urlsafe_b64decode(token.split(".")[0] + "==")
    # Go-style sorted keys: alg, ssh3-cert, typ
    assert list(json.loads(header_json)) == ["alg", CERT_HEADER, "typ"]
    assert decode_header_value(token_header(token)[CERT_HEADER]) == blob
    # a verifier that knows nothing of certificates (the reference) still checks the
    # token with the plain key
    plain = parse_certificate_blob(blob).public_key()
    assert verify_token(token, [plain], "alice", CONV) is plain


def check(token: str, lines_text: str, trusted: set[bytes], user: str = "alice",
          address: str = "127.0.0.1"):
    lines, warnings = parse_identities(lines_text, "ak")
    assert warnings == []
    return PublicKeyCheck(token, user, CONV, address, Permissions(), False).run(
        lines, trusted)  # type: ignore[arg-type]


def test_pubkey_check_certificate_paths(tmp_path, ca):
    key, blob = make_cert(tmp_path, ca, "-n", "alice", "-O", "force-command=uptime")
    token = token_for(key, "alice", blob)
    result = check(token, "", {ca_blob(ca)})
    assert result.permissions is not None
    assert result.permissions.forced_command == "uptime"
    assert "cert id='id-user'" in result.detail and "(trusted CA file)" in result.detail
    # cert-authority line whose command= differs from the certificate's: refused
    ca_line = Path(f"{ca}.pub").read_text().strip()
    result = check(token, f'cert-authority,command="id" {ca_line}\n', set())
    assert result.permissions is None
    assert "force different commands" in result.reason
    # a token signed by another key than the certified one
    other, _ = make_cert(tmp_path, ca, "-n", "alice", name="other")
    result = check(token_for(other, "alice", blob), "", {ca_blob(ca)})
    assert result.permissions is None and "signature invalid" in result.reason


def test_dummy_verification_costs_a_verification(tmp_path, ca):
    key, blob = make_cert(tmp_path, ca, "-n", "alice", kind="rsa")
    token = token_for(key, "alice", None)
    started = time.perf_counter()
    dummy_verification(token, CONV, Permissions(), set())
    dummy_verification("garbage", CONV, Permissions(), set())  # does not raise
    assert time.perf_counter() - started < 5


# the example of docs/certificates.md
DOC_CA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICmsuuFBvMrwsi4alNNNC8c2HlJtC/4SyJeUvJMilm3X"
DOC_CERT = (
    "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAA"
    "AIEB+bpRlU95q/r1aeklwC5op1YT/1MCF0pD39f6DghlAAAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3"
    "chmQSVTG4AAAAAAAAAAcAAAABAAAADWFsaWNlQGV4YW1wbGUAAAAJAAAABWFsaWNlAAAAAGVTyfAAAAAAZVV"
    "QkAAAAAAAAAASAAAACnBlcm1pdC1wdHkAAAAAAAAAAAAAADMAAAALc3NoLWVkMjU1MTkAAAAgKay64UG8yvC"
    "yLhqU000LxzYeUm0L/hLIl5S8kyKWbdcAAABTAAAAC3NzaC1lZDI1NTE5AAAAQJUrXG/CAbUdhLeQNdVSovh"
    "Wg6iDxeOFMfVuapF12WYHq2/g5pXedsvgVHdQjyxlvQej6UTpPVJzrJSMaJf3HwY="
)
DOC_TOKEN = (
    "eyJhbGciOiJFZERTQSIsInNzaDMtY2VydCI6IkFBQUFJSE56YUMxbFpESTFOVEU1TFdObGNuUXRkakF4UUc5"
    "d1pXNXpjMmd1WTI5dEFBQUFJRUIrYnBSbFU5NXEvcjFhZWtsd0M1b3AxWVQvMU1DRjBwRDM5ZjZEZ2hsQUFB"
    "QUFJQU9oQjcvenpoQytIWERkR09kTHdKbG41Tll3bTZVTlh4M2NobVFTVlRHNEFBQUFBQUFBQUFjQUFBQUJB"
    "QUFBRFdGc2FXTmxRR1Y0WVcxd2JHVUFBQUFKQUFBQUJXRnNhV05sQUFBQUFHVlR5ZkFBQUFBQVpWVlFrQUFB"
    "QUFBQUFBQVNBQUFBQ25CbGNtMXBkQzF3ZEhrQUFBQUFBQUFBQUFBQUFETUFBQUFMYzNOb0xXVmtNalUxTVRr"
    "QUFBQWdLYXk2NFVHOHl2Q3lMaHFVMDAwTHh6WWVVbTBML2hMSWw1UzhreUtXYmRjQUFBQlRBQUFBQzNOemFD"
    "MWxaREkxTlRFNUFBQUFRSlVyWEcvQ0FiVWRoTGVRTmRWU292aFdnNmlEeGVPRk1mVnVhcEYxMldZSHEyL2c1"
    "cFhlZHN2Z1ZIZFFqeXhsdlFlajZVVHBQVkp6ckpTTWFKZjNId1k9IiwidHlwIjoiSldUIn0.eyJhdWQiOiJ1"
    "bnVzZWQiLCJjbGllbnRfaWQiOiJzc2gzLWFsaWNlIiwiZXhwIjoxNzAwMDAwMDEwLCJpYXQiOjE3MDAwMDAw"
    "MDAsImlzcyI6ImFsaWNlIiwianRpIjoiN0g1Y3kvblRYQUovbnNPcEhtYlc3azBZRUhkUWJRdVVKdVdnL0Mr"
    "aFh1TT0iLCJzdWIiOiJzc2gzIn0.wML2BLmnV8gOVJ8P9aT9J5u_PsFfT6HRFcsteX_1mAdutoAApTSShVGs"
    "RYSWinnn-b6vjUMmrabZSJKFfRQ5CQ"
)


def test_documented_example():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    blob = certificate_blob_of_text(DOC_CERT.encode())
    assert blob is not None
    ca_key = base64.b64decode(DOC_CA.split()[1])
    grant = check_certificate(blob, user="alice", client_address="192.0.2.1",
                              trusted_cas={ca_key: {"alice"}}, now=1700000000)
    assert (grant.key_id, grant.serial, grant.permit_pty, grant.permit_port_forwarding) == (
        "alice@example", 7, True, False)
    user = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    conv = base64.b64decode("7H5cy/nTXAJ/nsOpHmbW7k0YEHdQbQuUJuWg/C+hXuM=")
    assert build_token(user, "alice", conv, now=1700000000, certificate=blob) == DOC_TOKEN
    ca = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    assert key_blob(ca.public_key()) == ca_key
    with pytest.raises(CertificateError, match="certificate expired"):
        check_certificate(blob, user="alice", client_address="192.0.2.1",
                          trusted_cas={ca_key: {"alice"}}, now=1700090000)


def test_p521_only_as_a_certificate_authority(tmp_path):
    keygen("-t", "ecdsa", "-b", "521", "-N", "", "-f", str(tmp_path / "ca521"))
    line = Path(f"{tmp_path / 'ca521'}.pub").read_text().strip()
    ids, warnings = parse_identities(f"{line}\ncert-authority {line}\n", "ak")
    assert warnings == ["ak:1: unsupported key type ecdsa-sha2-nistp521"]
    assert len(ids) == 1 and ids[0].options.cert_authority  # type: ignore[union-attr]
    key, blob = make_cert(tmp_path, tmp_path / "ca521", "-n", "alice")
    result = check(token_for(key, "alice", blob), f"cert-authority {line}\n", set())
    assert result.permissions is not None, result.reason


def test_mutated_certificates_are_refused_not_crashing(tmp_path, ca):
    """Bad input: every corrupted certificate gives a refusal with a reason."""
    import random

    key, blob = make_cert(tmp_path, ca, "-n", "alice", "-O", "source-address=127.0.0.1/32")
    private = load_ssh_private_key(key.read_bytes(), None)
    rng = random.Random(1234)
    refused = 0
    for _ in range(300):
        mutated = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        if rng.random() < 0.2:
            mutated = mutated[:rng.randrange(len(mutated))]
        token = build_token(private, "alice", CONV,  # type: ignore[arg-type]
                            certificate=bytes(mutated))
        result = check(token, "", {ca_blob(ca)})
        if result.permissions is None:
            refused += 1
            assert result.reason
    # the CA signature covers every byte; a "mutation" may write the same value back
    assert refused > 290
