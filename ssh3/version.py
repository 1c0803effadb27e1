"""SSH3 version strings and negotiation (PROTOCOL.md §2.2).

The version travels in User-Agent (client) and Server (server), e.g.
``SSH 3.0 francoismichel/ssh3 0.1.7 experimental_spec_version=alpha-00``. The spec
version goes in an extra field rather than in "3.0_alpha-00" because the reference's
older releases reject any protocol field other than exactly "3.0".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROTOCOL_NAME = "SSH"
PROTOCOL_VERSION = "3.0"
SPEC_VERSION = "alpha-00"
IMPLEMENTATION_NAME = "ssh3-py"
SOFTWARE_VERSION: tuple[int, int, int] = (0, 1, 0)

REFERENCE_IMPLEMENTATION = "francoismichel/ssh3"

_SPEC_FIELD = "experimental_spec_version"
# Go's strconv.Atoi would also take a sign; plain digits is all a real peer sends.
_INT = re.compile(r"[0-9]+", re.ASCII)


@dataclass(frozen=True)
class Version:
    protocol_name: str
    major: int
    minor: int
    spec: str
    implementation: str
    software: tuple[int, int, int]

    @property
    def protocol_version(self) -> str:
        """`MAJ.MIN` or `MAJ.MIN_<spec>`, as the reference prints it in its 403 text."""
        base = f"{self.major}.{self.minor}"
        return f"{base}_{self.spec}" if self.spec else base

    @property
    def software_version(self) -> str:
        return ".".join(str(n) for n in self.software)

    def same_protocol(self, other: Version) -> bool:
        return (self.major, self.minor, self.spec) == (other.major, other.minor, other.spec)

    def __str__(self) -> str:
        s = (
            f"{self.protocol_name} {self.major}.{self.minor} "
            f"{self.implementation} {self.software_version}"
        )
        if self.spec:
            s += f" {_SPEC_FIELD}={self.spec}"
        return s


def _parse_int(text: str, what: str, whole: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError(f"invalid SSH version string {whole!r}: bad {what} {text!r}")
    return int(text)


def parse_version(s: str) -> Version:
    """Parse a version string with the reference's rules; ValueError if malformed."""
    parts = s.split()
    if len(parts) < 4:
        raise ValueError(
            f"invalid SSH version string {s!r}: expected at least 4 fields, got {len(parts)}"
        )
    protocol_name, proto, implementation, software = parts[:4]

    proto_parts = proto.split("_")
    if len(proto_parts) > 2:
        raise ValueError(
            f"invalid SSH version string {s!r}: protocol version {proto!r} "
            "has more than one '_'"
        )
    spec = proto_parts[1] if len(proto_parts) == 2 else ""
    maj_min = proto_parts[0].split(".")
    if len(maj_min) != 2:
        raise ValueError(
            f"invalid SSH version string {s!r}: protocol version {proto!r} is not MAJ.MIN"
        )
    major = _parse_int(maj_min[0], "protocol major version", s)
    minor = _parse_int(maj_min[1], "protocol minor version", s)

    sw_parts = software.split(".")
    if len(sw_parts) != 3:
        raise ValueError(
            f"invalid SSH version string {s!r}: software version {software!r} is not a.b.c"
        )
    a, b, c = (_parse_int(p, "software version number", s) for p in sw_parts)

    for extra in parts[4:]:
        kv = extra.split("=")
        # Exactly key=value, as the reference; anything else is skipped, not an error.
        if len(kv) == 2 and kv[0] == _SPEC_FIELD:
            spec = kv[1]

    return Version(protocol_name, major, minor, spec, implementation, (a, b, c))


def is_supported(v: Version) -> bool:
    """The reference server's acceptance rule (IsVersionSupported)."""
    if (v.major, v.minor) != (OUR_VERSION.major, OUR_VERSION.minor):
        return False
    # Releases older than alpha-00 signalled no spec; only 0.1.3-0.1.5 are compatible.
    if (
        v.spec == ""
        and v.implementation == REFERENCE_IMPLEMENTATION
        and v.software[0] == 0
        and v.software[1] == 1
        and v.software[2] <= 5
    ):
        return v.software[2] >= 3
    return v.spec == SPEC_VERSION


def _ours() -> Version:
    major, minor = (int(x) for x in PROTOCOL_VERSION.split("."))
    return Version(PROTOCOL_NAME, major, minor, SPEC_VERSION, IMPLEMENTATION_NAME, SOFTWARE_VERSION)


OUR_VERSION = _ours()

# The Go client's fallback list, in its order of preference.
REFERENCE_RETRY_VERSIONS: tuple[Version, ...] = (
    Version(PROTOCOL_NAME, 3, 0, SPEC_VERSION, REFERENCE_IMPLEMENTATION, (0, 1, 7)),
    Version(PROTOCOL_NAME, 3, 0, "", REFERENCE_IMPLEMENTATION, (0, 1, 5)),
    Version(PROTOCOL_NAME, 3, 0, "", REFERENCE_IMPLEMENTATION, (0, 1, 4)),
    Version(PROTOCOL_NAME, 3, 0, "", REFERENCE_IMPLEMENTATION, (0, 1, 3)),
)


def pick_retry_version(server: Version) -> Version | None:
    """Version to retry with after a 403 whose Server header is `server`.

    Like the reference client: only when the server's protocol version differs from
    ours; an exact match in the list first, else the first with the same protocol
    version; None when no retry applies.
    """
    if server.same_protocol(OUR_VERSION):
        return None
    for v in REFERENCE_RETRY_VERSIONS:
        if v == server:
            return v
    for v in REFERENCE_RETRY_VERSIONS:
        if v.same_protocol(server):
            return v
    return None


def unsupported_version_body(peer: Version) -> str:
    """Body of the reference server's 403 for a parsable but unsupported version."""
    return (
        f"Unsupported version: {peer.protocol_version} not supported by server "
        f"with version {OUR_VERSION.protocol_version}\n"
    )


__all__ = [
    "IMPLEMENTATION_NAME",
    "OUR_VERSION",
    "PROTOCOL_VERSION",
    "REFERENCE_RETRY_VERSIONS",
    "SOFTWARE_VERSION",
    "SPEC_VERSION",
    "Version",
    "is_supported",
    "parse_version",
    "pick_retry_version",
    "unsupported_version_body",
]
