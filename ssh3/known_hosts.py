"""The client's ``~/.ssh3/known_hosts`` file (PROTOCOL.md §1.5).

Each line is ``<host>:<port><path> x509-certificate <base64-std(DER)>``, the same
format the Go client reads and writes, so both clients can share one file.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Literal

from ssh3.certs import fingerprint

__all__ = [
    "CERT_TYPE",
    "KnownHostEntry",
    "KnownHosts",
    "canonical_host",
    "default_path",
    "mismatch_message",
]

CERT_TYPE = "x509-certificate"


def canonical_host(hostname: str, port: int, path: str) -> str:
    """The known_hosts key for a server: ``host:port/path``.

    IPv6 literals stay unbracketed (``::1:443/ssh3-term``) because that is what the
    Go client writes; brackets would make our entries invisible to it and vice versa.
    """
    if len(hostname) >= 2 and hostname.startswith("[") and hostname.endswith("]"):
        hostname = hostname[1:-1]
    if not path.startswith("/"):
        path = "/" + path
    return f"{hostname}:{port}{path}"


def default_path() -> str:
    """``~/.ssh3/known_hosts`` for the current ``$HOME``."""
    return os.path.expanduser(os.path.join("~", ".ssh3", "known_hosts"))


@dataclass
class KnownHostEntry:
    host: str
    der: bytes
    line_number: int


def _count_lines(data: bytes) -> int:
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


class KnownHosts:
    """The certificates remembered per canonical host, in file order."""

    def __init__(
        self,
        path: str,
        entries: list[KnownHostEntry] | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        self.path = path
        self.entries: list[KnownHostEntry] = list(entries or [])
        self.warnings: list[str] = list(warnings or [])

    @classmethod
    def load(cls, path: str) -> KnownHosts:
        """Read ``path``; a missing file is an empty store.

        Bad lines are skipped, not fatal, like the Go client does, so one corrupt
        entry cannot lock the user out of every other host.
        """
        known = cls(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return known
        text = data.decode("utf-8", errors="replace")
        # Split on "\n" only, as Go's line scanner does, so that line numbers agree
        # with what editors and `sed -n Np` show.
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 3:
                known._warn(number, f"expected 3 fields, found {len(fields)}")
                continue
            host, kind, blob = fields
            if kind != CERT_TYPE:
                known._warn(number, f"unsupported entry type {kind!r} (want {CERT_TYPE!r})")
                continue
            try:
                der = base64.b64decode(blob, validate=True)
            except (binascii.Error, ValueError):
                known._warn(number, "certificate is not valid base64")
                continue
            try:
                _parse_der_certificate(der)
            except ValueError:
                known._warn(number, "certificate does not parse as DER X.509")
                continue
            known.entries.append(KnownHostEntry(host, der, number))
        return known

    def _warn(self, line_number: int, reason: str) -> None:
        self.warnings.append(f"{self.path}:{line_number}: {reason}")

    def entries_for(self, host: str) -> list[KnownHostEntry]:
        return [entry for entry in self.entries if entry.host == host]

    def knows(self, host: str) -> bool:
        return any(entry.host == host for entry in self.entries)

    def check(self, host: str, der: bytes) -> Literal["match", "unknown", "mismatch"]:
        """Compare the server's leaf certificate with the stored ones, byte for byte.

        The Go client instead uses stored certificates as trust anchors (so anything
        they sign passes); pinning the exact certificate is deliberately stricter.
        """
        entries = self.entries_for(host)
        if not entries:
            return "unknown"
        if any(entry.der == der for entry in entries):
            return "match"
        return "mismatch"

    def add(self, host: str, der: bytes) -> KnownHostEntry:
        """Append ``host``'s certificate to the file and to this object."""
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"invalid known_hosts host {host!r}: empty or contains spaces")
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            # makedirs' mode is filtered by the umask; the directory must be private.
            os.chmod(directory, 0o700)
        line = f"{host} {CERT_TYPE} {base64.b64encode(der).decode('ascii')}\n".encode("ascii")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            existing = b""
            size = os.fstat(fd).st_size
            if size:
                existing = os.pread(fd, size, 0)
            if existing and not existing.endswith(b"\n"):
                # Otherwise the new entry would be glued onto a hand-edited last line.
                line = b"\n" + line
            os.write(fd, line)
        finally:
            os.close(fd)
        entry = KnownHostEntry(host, der, _count_lines(existing + line))
        self.entries.append(entry)
        return entry


def _der_element(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[pos:pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise ValueError("length not in DER's shortest form")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, pos, pos + length


def _parse_der_certificate(der: bytes) -> None:
    """Raise ValueError unless `der` has the shape of a DER X.509 certificate:
    SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE, signature
    BIT STRING } and nothing after it. A structural check, not a full parse:
    `cryptography.x509` costs ~15-20 ms to import on every run of the client, and
    a line only ever counts when it equals, byte for byte, the certificate the
    server presented (which the TLS stack parsed)."""
    tag, start, end = _der_element(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("not a DER SEQUENCE")
    tags = []
    pos = start
    while pos < end:
        tag, _, pos = _der_element(der, pos)
        tags.append(tag)
    if tags != [0x30, 0x30, 0x03]:
        raise ValueError("not an X.509 certificate")


def _line_list(lines: list[int]) -> str:
    numbers = [str(n) for n in sorted(set(lines))]
    if len(numbers) == 1:
        return f"line {numbers[0]}"
    return "lines " + ", ".join(numbers[:-1]) + " and " + numbers[-1]


def mismatch_message(path: str, host: str, lines: list[int], der: bytes) -> str:
    """Explain a certificate that differs from the remembered one, and the way out."""
    if lines:
        where = _line_list(lines)
        remembered = f"{path} {where}"
        fix = f"remove {where} of {path}"
    else:
        remembered = path
        fix = f"remove the lines for {host} from {path}"
    return (
        f"the certificate of {host} ({fingerprint(der)}) does not match the one "
        f"remembered in {remembered}: someone may be intercepting the connection, "
        f"or the server's certificate changed. If you trust the new certificate, "
        f"{fix} and connect again."
    )
