"""authorized_keys options, parsed as strictly as OpenSSH's sshd (auth-options.c).

A line's options are a comma-separated list before the key type. Flag options are
applied in order, so ``restrict,pty`` re-enables the pty that ``restrict`` took away
while ``pty,restrict`` does not. Values must be double-quoted (``\\"`` stands for a
quote inside). ``permitopen``, ``permitlisten`` and ``environment`` may repeat; the
other valued options may appear once, except ``expiry-time`` whose earliest value
wins (as sshd). An unknown option, an unquoted value or a bad value makes the whole
line unusable: the caller skips it with a warning naming file and line.

``from=`` is matched here too (:func:`match_from`): the server does no reverse DNS,
so patterns are matched against the client's address only (see
docs/authorized-keys.md). asyncssh has pattern code of its own, but it is written
for its connection objects and would pull in a whole SSH stack for ~40 lines;
these are written against sshd's match.c/addrmatch.c rules instead.
"""

from __future__ import annotations

import calendar
import ipaddress
import re
import time
from dataclasses import dataclass

# (host, port) an option allows; port None means any port ("host:*")
HostPort = tuple[str, int | None]

# flag options that sshd knows; the values are the attribute they set (None: parsed
# and ignored, because ssh3 has no such feature: X11, ~/.ssh/rc, tun devices)
_FLAGS: dict[str, tuple[str | None, bool]] = {
    "agent-forwarding": ("permit_agent_forwarding", True),
    "no-agent-forwarding": ("permit_agent_forwarding", False),
    "port-forwarding": ("permit_port_forwarding", True),
    "no-port-forwarding": ("permit_port_forwarding", False),
    "pty": ("permit_pty", True),
    "no-pty": ("permit_pty", False),
    "x11-forwarding": (None, True),
    "no-x11-forwarding": (None, False),
    "user-rc": (None, True),
    "no-user-rc": (None, False),
    "cert-authority": ("cert_authority", True),
    "no-touch-required": (None, True),
    "verify-required": ("verify_required", True),
}
_VALUED = frozenset({"command", "environment", "expiry-time", "from", "permitlisten",
                     "permitopen", "principals", "tunnel"})
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPIRY_RE = re.compile(r"(\d{8})(\d{4}(\d{2})?)?(Z|z)?")


class OptionError(ValueError):
    """A malformed option; the message is short and never quotes the line."""


@dataclass(frozen=True)
class KeyOptions:
    """What the options of one authorized_keys line say."""

    cert_authority: bool = False
    permit_pty: bool = True
    permit_port_forwarding: bool = True
    permit_agent_forwarding: bool = True
    # FIDO user verification: ssh3 keys cannot prove it, so such a line never matches
    verify_required: bool = False
    command: str | None = None
    environment: tuple[tuple[str, str], ...] = ()
    from_patterns: str | None = None
    expiry_time: int | None = None  # seconds since the epoch; the key is refused after it
    principals: tuple[str, ...] | None = None
    permit_open: tuple[HostPort, ...] | None = None
    permit_listen: tuple[HostPort, ...] | None = None

    @property
    def is_empty(self) -> bool:
        return self == KeyOptions()


def _dequote(name: str, value: str) -> str:
    """sshd's opt_dequote: the value is one double-quoted string, ``\\"`` a quote."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise OptionError(f"{name}= value must be double-quoted")
    out: list[str] = []
    i = 1
    while i < len(value) - 1:
        ch = value[i]
        if ch == "\\" and value[i + 1] == '"' and i + 1 < len(value) - 1:
            out.append('"')
            i += 2
            continue
        if ch == '"':
            raise OptionError(f"{name}= value has text after its closing quote")
        out.append(ch)
        i += 1
    return "".join(out)


def parse_expiry_time(text: str, *, local: bool = True) -> int:
    """``YYYYMMDD[HHMM[SS]][Z]`` (sshd's parse_absolute_time): local time unless Z."""
    m = _EXPIRY_RE.fullmatch(text)
    if not m:
        raise OptionError("expiry-time must be YYYYMMDD[HHMM[SS]][Z]")
    digits = m.group(1) + (m.group(2) or "")
    if m.group(2) and not m.group(3):
        digits += "00"
    digits = digits.ljust(14, "0")
    try:
        parsed = time.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        raise OptionError("expiry-time is not a valid date") from None
    if m.group(4) or not local:
        return calendar.timegm(parsed)
    return int(time.mktime(parsed))


def _parse_port(text: str, name: str, allow_any: bool) -> int | None:
    if text == "*" and allow_any:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise OptionError(f"{name}= has a bad port")
    return int(text)


def parse_host_port(text: str, name: str) -> HostPort:
    """``host:port``, ``[v6]:port``; port may be ``*``; permitlisten also takes a lone
    port (any listen address, as sshd's "*:port")."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise OptionError(f"{name}= has a bad [address]:port")
        host, port = text[1:end], text[end + 2 :]
    elif ":" in text:
        host, _, port = text.rpartition(":")
    elif name == "permitlisten":
        host, port = "*", text
    else:
        raise OptionError(f"{name}= needs host:port")
    if not host or any(c in host for c in " \t,"):
        raise OptionError(f"{name}= has a bad host")
    return host.lower(), _parse_port(port, name, allow_any=True)


def parse_options(raw: list[str]) -> KeyOptions:
    """The options of one line (already split at unquoted commas)."""
    fields: dict[str, object] = {}
    environment: list[tuple[str, str]] = []
    permit_open: list[HostPort] = []
    permit_listen: list[HostPort] = []
    seen_open = seen_listen = False
    for opt in raw:
        name, sep, value = opt.partition("=")
        name = name.lower()  # sshd compares option names case-insensitively
        if not sep:
            if name == "restrict":
                fields.update(permit_pty=False, permit_port_forwarding=False,
                              permit_agent_forwarding=False)
                continue
            if name not in _FLAGS:
                raise OptionError(f"unknown option {name!r}" if name not in _VALUED
                                  else f"option {name!r} needs a value")
            attr, flag = _FLAGS[name]
            if attr is not None:
                fields[attr] = flag
            continue
        if name not in _VALUED:
            raise OptionError(f"unknown option {name!r}" if name not in _FLAGS
                              else f"option {name!r} takes no value")
        text = _dequote(name, value)
        if name == "command":
            if "command" in fields:
                raise OptionError("more than one command= option")
            fields["command"] = text
        elif name == "from":
            if "from_patterns" in fields:
                raise OptionError("more than one from= option")
            check_patterns(text)
            fields["from_patterns"] = text
        elif name == "principals":
            if "principals" in fields:
                raise OptionError("more than one principals= option")
            principals = tuple(p for p in text.split(","))
            if not principals or any(not p.strip() for p in principals):
                raise OptionError("principals= has an empty entry")
            fields["principals"] = tuple(p.strip() for p in principals)
        elif name == "expiry-time":
            when = parse_expiry_time(text)
            old = fields.get("expiry_time")
            fields["expiry_time"] = when if old is None else min(when, old)  # type: ignore[type-var]
        elif name == "environment":
            env_name, eq, env_value = text.partition("=")
            if not eq or not _ENV_NAME_RE.fullmatch(env_name):
                raise OptionError("environment= must be NAME=value")
            # the first value of a name wins, as in sshd
            if all(n != env_name for n, _ in environment):
                environment.append((env_name, env_value))
        elif name == "permitopen":
            seen_open = True
            if text.lower() != "none":  # sshd: "none" allows no destination
                permit_open.append(parse_host_port(text, name))
        elif name == "permitlisten":
            seen_listen = True
            if text.lower() != "none":
                permit_listen.append(parse_host_port(text, name))
        elif name == "tunnel":
            if not (text.isdigit() or text == "any"):
                raise OptionError("tunnel= must be a number")
    if environment:
        fields["environment"] = tuple(environment)
    if seen_open:
        fields["permit_open"] = tuple(permit_open)
    if seen_listen:
        fields["permit_listen"] = tuple(permit_listen)
    return KeyOptions(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- from= patterns


def _wildcard_match(text: str, pattern: str) -> bool:
    """sshd's match_pattern: ``*`` any run, ``?`` one character, case-insensitive here."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.IGNORECASE | re.DOTALL) is not None


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network *entry* names, None if it is no address (then a wildcard pattern);
    OptionError when it is an address with host bits beyond the mask (sshd: error)."""
    try:
        return ipaddress.ip_network(entry, strict=True)
    except ValueError:
        pass
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None
    raise OptionError(f"network {entry!r} has bits set beyond its mask")


def check_patterns(patterns: str) -> None:
    """Refuse a from=/source-address list that could never be evaluated."""
    for entry in patterns.split(","):
        entry = entry.strip().removeprefix("!")
        if not entry:
            raise OptionError("from= has an empty pattern")
        _network(entry)


def normalise_address(address: str) -> str:
    """``::ffff:1.2.3.4`` (dual-stack sockets) is the IPv4 client 1.2.3.4."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def match_from(patterns: str, address: str) -> bool:
    """sshd's match_host_and_ip with UseDNS=no: the client's address against a
    ``from=`` list. A ``!`` entry that matches refuses outright; otherwise one
    positive entry (address, CIDR network or ``*``/``?`` wildcard) must match."""
    address = normalise_address(address)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    matched = False
    for entry in patterns.split(","):
        entry = entry.strip()
        negated = entry.startswith("!")
        entry = entry.removeprefix("!")
        try:
            network = _network(entry)
        except OptionError:
            return False  # sshd: an inconsistent network refuses the key
        hit = (ip in network) if network is not None and network.version == ip.version \
            else (network is None and _wildcard_match(address, entry))
        if hit and negated:
            return False
        matched = matched or hit
    return matched


def match_source_address(cidrs: str, address: str) -> bool:
    """A certificate's ``source-address`` (sshd's addr_match_cidr_list): addresses
    and CIDR networks only, no wildcards or negation; anything else refuses."""
    address = normalise_address(address)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in cidrs.split(","):
        try:
            network = ipaddress.ip_network(entry.strip(), strict=True)
        except ValueError:
            return False
        if network.version == ip.version and ip in network:
            return True
    return False


__all__ = [
    "HostPort",
    "KeyOptions",
    "OptionError",
    "match_from",
    "match_source_address",
    "normalise_address",
    "parse_expiry_time",
    "parse_host_port",
    "parse_options",
]
