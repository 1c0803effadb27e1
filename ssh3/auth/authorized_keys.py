"""Authorized identities (PROTOCOL.md §2.5): public keys and OIDC identities of a user.

Lines are read the way the reference server reads them: an OpenSSH
``authorized_keys`` line (optionally with leading options) becomes a public-key
identity, ``oidc <client_id> <issuer_url> <email>`` an OIDC identity, and
anything else is reported as a warning and skipped.  Unlike the reference we
keep the options, parsed as strictly as sshd (ssh3/auth/key_options.py: a line
with a bad option is skipped with a warning), and we check that the key-type word
matches the key data as OpenSSH does.
"""

from __future__ import annotations

import binascii
import os
import stat
from dataclasses import dataclass
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from .key_options import KeyOptions, OptionError, parse_options
from .keys import PublicKey

SUPPORTED_KEY_TYPES = frozenset(
    {"ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ssh-rsa"}
)

# a cert-authority line only verifies certificate signatures, never a JWT, so its
# key may also be of a type that cannot sign one
CA_ONLY_KEY_TYPES = frozenset({"ecdsa-sha2-nistp521"})

# A user's identity files are small; the cap bounds what a root server reads
# from a user-controlled path.
MAX_IDENTITY_FILE_SIZE = 1 << 20

_WHITESPACE = " \t"
# Only to word warnings: a first field like this was meant to be a key.
_KEY_TYPE_PREFIXES = ("ssh-", "ecdsa-", "sk-")


class IdentityFileError(OSError):
    """An identity file exists but must not be used (too large, not a regular file)."""


@dataclass(frozen=True)
class PublicKeyIdentity:
    public_key: PublicKey
    key_type: str
    comment: str
    options: KeyOptions
    source: str
    line_number: int


@dataclass(frozen=True)
class OidcIdentity:
    client_id: str
    issuer_url: str
    email: str
    source: str
    line_number: int


Identity: TypeAlias = PublicKeyIdentity | OidcIdentity


class _LineError(Exception):
    pass


def _split_field(text: str) -> tuple[str, str]:
    """First space/tab-separated field of *text* and the remainder (left-stripped)."""
    text = text.lstrip(_WHITESPACE)
    for i, ch in enumerate(text):
        if ch in _WHITESPACE:
            return text[:i], text[i:].lstrip(_WHITESPACE)
    return text, ""


def _blob_key_type(b64: str) -> str | None:
    """Key type named inside an SSH public key blob, or None if *b64* is not one."""
    try:
        blob = binascii.a2b_base64(b64.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    if len(blob) < 4:
        return None
    n = int.from_bytes(blob[:4], "big")
    if not 0 < n <= 64 or len(blob) < 4 + n:
        return None
    name = blob[4 : 4 + n]
    if not all(0x21 <= b < 0x7F for b in name):
        return None
    return name.decode("ascii")


def _scan_options(line: str) -> tuple[list[str], str] | None:
    """Split leading options off *line* as golang.org/x/crypto/ssh does.

    Commas and whitespace inside double quotes do not end an option; ``\\"``
    does not close a quote.  Returns (options, rest) or None when the options
    never end (unterminated quote, or nothing after them).
    """
    options: list[str] = []
    in_quote = False
    start = 0
    for i, ch in enumerate(line):
        is_end = not in_quote and ch in _WHITESPACE
        if (ch == "," and not in_quote) or is_end:
            if i > start:
                options.append(line[start:i])
            start = i + 1
        if is_end:
            rest = line[i:].lstrip(_WHITESPACE)
            return (options, rest) if rest else None
        if ch == '"' and (i == 0 or line[i - 1] != "\\"):
            in_quote = not in_quote
    return None


def _parse_options(raw: list[str]) -> KeyOptions:
    try:
        return parse_options(raw)
    except OptionError as exc:
        raise _LineError(str(exc)) from None


def _make_key_identity(
    type_word: str,
    rest: str,
    options: KeyOptions,
    source: str,
    line_number: int,
) -> PublicKeyIdentity:
    b64, comment = _split_field(rest)
    blob_type = _blob_key_type(b64)
    if blob_type is None:
        raise _LineError(f"invalid key data for {type_word}")
    if blob_type != type_word:
        raise _LineError(f"key type {type_word} does not match key data ({blob_type})")
    if blob_type not in SUPPORTED_KEY_TYPES and not (
            options.cert_authority and blob_type in CA_ONLY_KEY_TYPES):
        raise _LineError(f"unsupported key type {blob_type}")
    try:
        key = load_ssh_public_key(f"{blob_type} {b64}".encode("ascii"))
    except (ValueError, UnsupportedAlgorithm):
        raise _LineError(f"invalid {blob_type} key") from None
    return PublicKeyIdentity(
        public_key=key,  # type: ignore[arg-type]
        key_type=blob_type,
        comment=comment.strip(),
        options=options,
        source=source,
        line_number=line_number,
    )


def _parse_line(line: str, source: str, line_number: int) -> tuple[Identity, list[str]]:
    # First try "type base64 [comment]", then "options type base64 [comment]",
    # then oidc: the same order as the reference, so that a line such as
    # "oidc ssh-ed25519 AAAA..." is a key carrying an "oidc" flag option.
    first, rest = _split_field(line)
    second, _ = _split_field(rest)
    # A quote can only belong to an options field, never to a key type.
    if second and '"' not in first and _blob_key_type(second) is not None:
        return _make_key_identity(first, rest, KeyOptions(), source, line_number), []

    scanned = _scan_options(line)
    if scanned is not None:
        raw_options, after = scanned
        type_word, key_rest = _split_field(after)
        b64, _ = _split_field(key_rest)
        if type_word in SUPPORTED_KEY_TYPES | CA_ONLY_KEY_TYPES or (
                b64 and _blob_key_type(b64) is not None):
            options = _parse_options(raw_options)
            identity = _make_key_identity(type_word, key_rest, options, source, line_number)
            return identity, []

    tokens = line.split()
    if tokens[0] == "oidc":
        if len(tokens) != 4:
            raise _LineError(
                f"oidc identity needs 4 fields (oidc client_id issuer_url email), got {len(tokens)}"
            )
        return OidcIdentity(tokens[1], tokens[2], tokens[3], source, line_number), []
    if first.startswith(_KEY_TYPE_PREFIXES):
        raise _LineError(f"invalid key data for {first}")
    if scanned is None and '"' in line:
        raise _LineError("unterminated quote in options")
    raise _LineError("not a public key or oidc identity")


def parse_identities(text: str, source: str) -> tuple[list[Identity], list[str]]:
    """Parse an identities file; return the identities and ``source:line: reason`` warnings.

    Warnings never quote the offending line: these files may be read by a
    root server from user-controlled paths.
    """
    identities: list[Identity] = []
    warnings: list[str] = []
    # Split on "\n" only, like Go's line scanner, so line numbers agree with
    # editors even when the text contains form feeds or other separators.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identity, problems = _parse_line(line, source, number)
        except _LineError as e:
            warnings.append(f"{source}:{number}: {e}")
            continue
        identities.append(identity)
        warnings.extend(f"{source}:{number}: {p}" for p in problems)
    return identities, warnings


def _read_identity_file(path: str) -> str | None:
    """Contents of *path*, or None if it does not exist."""
    # O_NONBLOCK so a FIFO planted at this path cannot hang the server in open().
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IdentityFileError(f"{path}: not a regular file")
        if st.st_size > MAX_IDENTITY_FILE_SIZE:
            raise IdentityFileError(f"{path}: larger than {MAX_IDENTITY_FILE_SIZE} bytes")
        # Re-check after reading: the file may grow between fstat and read.
        data = f.read(MAX_IDENTITY_FILE_SIZE + 1)
    if len(data) > MAX_IDENTITY_FILE_SIZE:
        raise IdentityFileError(f"{path}: larger than {MAX_IDENTITY_FILE_SIZE} bytes")
    return data.decode("utf-8", errors="replace")


def identity_file_paths(home: str) -> list[str]:
    """The files read for a user, in order (§2.5)."""
    return [
        os.path.join(home, ".ssh3", "authorized_identities"),
        os.path.join(home, ".ssh", "authorized_keys"),
    ]


def load_user_identities(home: str, paths: list[str] | None = None
                         ) -> tuple[list[Identity], list[str]]:
    """All identities of the user whose home directory is *home* (or in *paths*,
    when the server was configured with its own AuthorizedKeysFile list).

    Missing files are fine; any other :class:`OSError` propagates, and the
    server answers 401 as the reference does.
    """
    identities: list[Identity] = []
    warnings: list[str] = []
    for path in paths if paths is not None else identity_file_paths(home):
        text = _read_identity_file(path)
        if text is None:
            continue
        found, problems = parse_identities(text, path)
        identities.extend(found)
        warnings.extend(problems)
    return identities, warnings


__all__ = [
    "Identity",
    "IdentityFileError",
    "MAX_IDENTITY_FILE_SIZE",
    "OidcIdentity",
    "PublicKeyIdentity",
    "SUPPORTED_KEY_TYPES",
    "identity_file_paths",
    "load_user_identities",
    "parse_identities",
]
