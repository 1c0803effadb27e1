"""Authorized identities files (PROTOCOL.md §2.5, ssh3.auth.authorized_keys)."""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ssh3.auth.authorized_keys import (
    MAX_IDENTITY_FILE_SIZE,
    IdentityFileError,
    OidcIdentity,
    PublicKeyIdentity,
    load_user_identities,
    parse_identities,
)
from ssh3.auth.jwt_token import verify_token
from ssh3.auth.key_options import KeyOptions
from ssh3.auth.keys import public_key_openssh

EXAMPLE_LINE = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
    " alice@example"
)
EXAMPLE_KEY_B64 = "AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
EXAMPLE_TOKEN = (
    "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9."
    "eyJhdWQiOiJ1bnVzZWQiLCJjbGllbnRfaWQiOiJzc2gzLWFsaWNlIiwiZXhwIjoxNzAwMDAwMDEwLCJpYXQiOjE3"
    "MDAwMDAwMDAsImlzcyI6ImFsaWNlIiwianRpIjoiN0g1Y3kvblRYQUovbnNPcEhtYlc3azBZRUhkUWJRdVVKdVdn"
    "L0MraFh1TT0iLCJzdWIiOiJzc2gzIn0."
    "CWGXfRdAABf2HYjJyk_4qrHBkRvJcgpeXoeYyz_RDX0BcSbimrmf8TjdUmuqimoBkqlUAmeXucNBTgke6PG2Aw"
)
EXAMPLE_CONV_ID = base64.b64decode("7H5cy/nTXAJ/nsOpHmbW7k0YEHdQbQuUJuWg/C+hXuM=")


def parse_one(line: str) -> PublicKeyIdentity | OidcIdentity:
    ids, warnings = parse_identities(line + "\n", "src")
    assert warnings == []
    assert len(ids) == 1
    return ids[0]


def warnings_for(text: str) -> list[str]:
    ids, warnings = parse_identities(text, "src")
    assert ids == []
    return warnings


def fake_blob(key_type: str, extra: bytes = b"\x00\x00\x00\x01x") -> str:
    raw = struct.pack(">I", len(key_type)) + key_type.encode() + extra
    return base64.b64encode(raw).decode()


# --- the worked example ------------------------------------------------------------


def test_example_line_verifies_example_token() -> None:
    ident = parse_one(EXAMPLE_LINE)
    assert isinstance(ident, PublicKeyIdentity)
    assert ident.key_type == "ssh-ed25519"
    assert ident.comment == "alice@example"
    assert ident.options == KeyOptions()
    assert (ident.source, ident.line_number) == ("src", 1)
    expected = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    assert ident.public_key == expected
    assert (
        verify_token(EXAMPLE_TOKEN, [ident.public_key], "alice", EXAMPLE_CONV_ID, now=1700000001)
        is ident.public_key
    )


@pytest.mark.parametrize(
    ("key", "key_type"),
    [
        (ed25519.Ed25519PrivateKey.generate(), "ssh-ed25519"),
        (ec.generate_private_key(ec.SECP256R1()), "ecdsa-sha2-nistp256"),
        (ec.generate_private_key(ec.SECP384R1()), "ecdsa-sha2-nistp384"),
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "ssh-rsa"),
    ],
    ids=["ed25519", "p256", "p384", "rsa"],
)
def test_supported_key_types(key: object, key_type: str) -> None:
    line = public_key_openssh(key) + " user@host  extra words "
    ident = parse_one(line)
    assert isinstance(ident, PublicKeyIdentity)
    assert ident.key_type == key_type
    assert ident.public_key == key.public_key()  # type: ignore[attr-defined]
    assert ident.comment == "user@host  extra words"


def test_no_comment_and_tabs() -> None:
    ident = parse_one("\tssh-ed25519\t" + EXAMPLE_KEY_B64 + "\t")
    assert isinstance(ident, PublicKeyIdentity) and ident.comment == ""


# --- options ------------------------------------------------------------------------


def test_options_with_quoted_commas_and_spaces() -> None:
    ident = parse_one(
        'command="echo a, b",no-pty,from="10.0.0.0/8" ' + EXAMPLE_LINE
    )
    assert isinstance(ident, PublicKeyIdentity)
    assert ident.options == KeyOptions(command="echo a, b", permit_pty=False,
                                       from_patterns="10.0.0.0/8")
    assert ident.comment == "alice@example"
    assert ident.key_type == "ssh-ed25519"


def test_options_escaped_quote_and_case() -> None:
    ident = parse_one(
        'Command="echo \\"hi, there\\" x",environment="A=b c",NO-PORT-FORWARDING '
        + EXAMPLE_LINE
    )
    assert isinstance(ident, PublicKeyIdentity)
    assert ident.options == KeyOptions(command='echo "hi, there" x', environment=(("A", "b c"),),
                                       permit_port_forwarding=False)


def test_cert_authority_and_restrict_flags() -> None:
    ident = parse_one("cert-authority,restrict,principals=\"a,b\" " + EXAMPLE_LINE)
    assert isinstance(ident, PublicKeyIdentity)
    assert ident.options == KeyOptions(cert_authority=True, principals=("a", "b"),
                                       permit_pty=False, permit_port_forwarding=False,
                                       permit_agent_forwarding=False)


def test_repeated_permitopen_accumulates_and_duplicate_command_skips_the_line() -> None:
    ids, warnings = parse_identities(
        '\npermitopen="a:1",permitopen="b:2" ' + EXAMPLE_LINE + "\n"
        + 'command="a",command="b" ' + EXAMPLE_LINE + "\n", "src"
    )
    assert len(ids) == 1
    assert ids[0].options.permit_open == (("a", 1), ("b", 2))  # type: ignore[union-attr]
    assert warnings == ["src:3: more than one command= option"]


def test_unterminated_quote() -> None:
    assert warnings_for('command="echo ' + EXAMPLE_LINE) == [
        "src:1: unterminated quote in options"
    ]


def test_quoted_key_inside_option_is_not_the_key() -> None:
    # The key blob appears inside a quoted option value; the real key follows.
    stranger = public_key_openssh(ed25519.Ed25519PrivateKey.generate())
    ident = parse_one(f'command="x {stranger.split()[1]} y" {EXAMPLE_LINE}')
    assert isinstance(ident, PublicKeyIdentity)
    assert public_key_openssh(ident.public_key) == EXAMPLE_LINE.rsplit(" ", 1)[0]


# --- oidc ---------------------------------------------------------------------------


def test_oidc_line() -> None:
    ident = parse_one("oidc my-client https://accounts.example.com alice@example.com")
    assert ident == OidcIdentity(
        client_id="my-client",
        issuer_url="https://accounts.example.com",
        email="alice@example.com",
        source="src",
        line_number=1,
    )


def test_oidc_wrong_token_count() -> None:
    text = "oidc a b\n\noidc a b c d\noidc\n"
    assert warnings_for(text) == [
        "src:1: oidc identity needs 4 fields (oidc client_id issuer_url email), got 3",
        "src:3: oidc identity needs 4 fields (oidc client_id issuer_url email), got 5",
        "src:4: oidc identity needs 4 fields (oidc client_id issuer_url email), got 1",
    ]


def test_oidc_word_as_option_of_a_key() -> None:
    # The reference tries the key parser first, so this is a key with an option
    # "oidc"; sshd (and we) refuse a line with an unknown option.
    assert warnings_for("oidc " + EXAMPLE_LINE) == ["src:1: unknown option 'oidc'"]


# --- skipping and warnings ------------------------------------------------------------


def test_comments_blank_lines_and_line_numbers() -> None:
    p256 = public_key_openssh(ec.generate_private_key(ec.SECP256R1()))
    text = "\r\n".join(
        [
            "# a comment " + EXAMPLE_LINE,  # 1
            "",  # 2
            "   \t ",  # 3
            EXAMPLE_LINE,  # 4
            "  # indented comment",  # 5
            "garbage",  # 6
            "oidc c https://i e",  # 7
            p256 + " p256",  # 8
        ]
    )
    ids, warnings = parse_identities(text, "/home/a/.ssh/authorized_keys")
    assert [i.line_number for i in ids] == [4, 7, 8]
    assert isinstance(ids[0], PublicKeyIdentity) and ids[0].comment == "alice@example"
    assert isinstance(ids[1], OidcIdentity)
    assert isinstance(ids[2], PublicKeyIdentity) and ids[2].comment == "p256"
    assert warnings == ["/home/a/.ssh/authorized_keys:6: not a public key or oidc identity"]


def test_unsupported_key_types_warn_and_skip() -> None:
    # cryptography no longer writes DSA keys in OpenSSH form; a blob naming the type suffices.
    dss = "ssh-dss " + fake_blob("ssh-dss")
    p521 = public_key_openssh(ec.generate_private_key(ec.SECP521R1()))
    cert_type = "ssh-ed25519-cert-v01@openssh.com"
    sk_type = "sk-ssh-ed25519@openssh.com"
    text = "\n".join(
        [
            dss + " old",
            p521,
            f"{cert_type} {fake_blob(cert_type)} cert",
            f"no-pty {sk_type} {fake_blob(sk_type)}",
            EXAMPLE_LINE,
        ]
    )
    ids, warnings = parse_identities(text, "f")
    assert [i.line_number for i in ids] == [5]
    assert warnings == [
        "f:1: unsupported key type ssh-dss",
        "f:2: unsupported key type ecdsa-sha2-nistp521",
        f"f:3: unsupported key type {cert_type}",
        f"f:4: unsupported key type {sk_type}",
    ]


def test_bad_key_data() -> None:
    p256 = public_key_openssh(ec.generate_private_key(ec.SECP256R1())).split()[1]
    text = "\n".join(
        [
            "ssh-ed25519 AAAA!!!! comment",
            "ssh-ed25519 " + EXAMPLE_KEY_B64[:-4],
            "ssh-rsa " + EXAMPLE_KEY_B64,
            "ecdsa-sha2-nistp384 " + p256,
            "ssh-ed25519 " + fake_blob("ssh-ed25519", b"\x00\x00\x00\x05short"),
            "no-pty ssh-ed25519 AAAA",
            "ssh-ed25519",
        ]
    )
    ids, warnings = parse_identities(text, "f")
    assert ids == []
    assert warnings == [
        "f:1: invalid key data for ssh-ed25519",
        "f:2: invalid ssh-ed25519 key",
        "f:3: key type ssh-rsa does not match key data (ssh-ed25519)",
        "f:4: key type ecdsa-sha2-nistp384 does not match key data (ecdsa-sha2-nistp256)",
        "f:5: invalid ssh-ed25519 key",
        "f:6: invalid key data for ssh-ed25519",
        "f:7: invalid key data for ssh-ed25519",
    ]


def test_warnings_do_not_quote_the_line() -> None:
    secret = "hunter2-secret-value"
    warnings = warnings_for(f"{secret} {secret}\n")
    assert warnings and all(secret not in w for w in warnings)


# --- files ----------------------------------------------------------------------------


def test_load_user_identities_order(tmp_path: Path) -> None:
    (tmp_path / ".ssh3").mkdir()
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh3" / "authorized_identities").write_text(
        "oidc c https://issuer e@x\nbogus\n"
    )
    (tmp_path / ".ssh" / "authorized_keys").write_text("# keys\n" + EXAMPLE_LINE + "\n")
    ids, warnings = load_user_identities(str(tmp_path))
    assert [type(i) for i in ids] == [OidcIdentity, PublicKeyIdentity]
    assert ids[0].source == str(tmp_path / ".ssh3" / "authorized_identities")
    assert ids[1].source == str(tmp_path / ".ssh" / "authorized_keys")
    assert ids[1].line_number == 2
    assert warnings == [
        f"{tmp_path / '.ssh3' / 'authorized_identities'}:2: not a public key or oidc identity"
    ]


def test_missing_files_are_fine(tmp_path: Path) -> None:
    assert load_user_identities(str(tmp_path)) == ([], [])
    assert load_user_identities(str(tmp_path / "no-such-home")) == ([], [])
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "authorized_keys").write_text(EXAMPLE_LINE)
    ids, _ = load_user_identities(str(tmp_path))
    assert len(ids) == 1


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".ssh").mkdir()
    path = tmp_path / ".ssh" / "authorized_keys"
    path.write_bytes(b"#" * (MAX_IDENTITY_FILE_SIZE + 1))
    with pytest.raises(IdentityFileError):
        load_user_identities(str(tmp_path))
    path.write_bytes(b"#" * MAX_IDENTITY_FILE_SIZE)
    assert load_user_identities(str(tmp_path)) == ([], [])


def test_non_regular_files_are_errors(tmp_path: Path) -> None:
    (tmp_path / ".ssh").mkdir()
    path = tmp_path / ".ssh" / "authorized_keys"
    path.mkdir()
    with pytest.raises(OSError):
        load_user_identities(str(tmp_path))
    path.rmdir()
    os.mkfifo(path)
    # Must not block waiting for a writer.
    with pytest.raises(IdentityFileError):
        load_user_identities(str(tmp_path))


def test_other_os_errors_propagate(tmp_path: Path) -> None:
    # ~/.ssh3 is a file, so opening ~/.ssh3/authorized_identities fails with ENOTDIR.
    (tmp_path / ".ssh3").write_text("")
    with pytest.raises(NotADirectoryError):
        load_user_identities(str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file_raises(tmp_path: Path) -> None:
    (tmp_path / ".ssh").mkdir()
    path = tmp_path / ".ssh" / "authorized_keys"
    path.write_text(EXAMPLE_LINE)
    path.chmod(0)
    with pytest.raises(PermissionError):
        load_user_identities(str(tmp_path))


def test_invalid_utf8_is_tolerated(tmp_path: Path) -> None:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "authorized_keys").write_bytes(
        b"\xff\xfe junk\n" + EXAMPLE_LINE.encode() + b"\n"
    )
    ids, warnings = load_user_identities(str(tmp_path))
    assert len(ids) == 1 and ids[0].line_number == 2
    assert len(warnings) == 1 and warnings[0].endswith(":1: not a public key or oidc identity")
