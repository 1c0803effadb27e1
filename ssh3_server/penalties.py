"""Per-source penalties against password guessing and scanning, in the spirit of
OpenSSH's PerSourcePenalties.

Each bad event from a source (a failed authentication, an unknown user, a
connection that never authenticated) adds time to that source's penalty. Once the
accumulated penalty reaches `min_penalty`, the source is refused without any
password or signature check until it runs out. Sources are IPv4 /32 and IPv6 /64
(one host usually owns a whole /64). The table is bounded; exempt networks are
never penalised.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class PenaltyPolicy:
    enabled: bool = True
    authfail: float = 5.0  # a refused credential
    invaliduser: float = 5.0  # a login attempt for a user that does not exist
    noauth: float = 1.0  # a connection closed without authenticating
    grace_exceeded: float = 20.0  # a connection that did not authenticate in time
    min_penalty: float = 15.0  # refusals start once this much has accumulated
    max_penalty: float = 600.0
    max_sources: int = 65536
    exempt: list[Network] = field(default_factory=list)


def parse_networks(items: Iterable[str]) -> list[Network]:
    """`10.0.0.0/8,::1` style lists; ValueError names the bad entry."""
    nets: list[Network] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if part:
                try:
                    nets.append(ipaddress.ip_network(part, strict=False))
                except ValueError:
                    raise ValueError(f"bad network {part!r} in the penalty exemptions") from None
    return nets


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class PenaltyBox:
    def __init__(self, policy: PenaltyPolicy,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        # source -> time at which its accumulated penalty runs out
        self._until: OrderedDict[str, float] = OrderedDict()

    def source(self, host: str) -> str | None:
        """The key a host is penalised under, or None if it is exempt (or unparsable)."""
        addr = _address(host)
        if addr is None or any(addr in net for net in self.policy.exempt):
            return None
        if isinstance(addr, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((addr, 64), strict=False))
        return str(addr)

    def remaining(self, host: str) -> float:
        """Seconds of refusal left for `host` (0 if it may try)."""
        if not self.policy.enabled:
            return 0.0
        key = self.source(host)
        if key is None:
            return 0.0
        until = self._until.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._until[key]
            return 0.0
        return left if left >= self.policy.min_penalty else 0.0

    def penalise(self, host: str, kind: str) -> float:
        """Add the penalty for an event of `kind` (a PenaltyPolicy field name);
        returns the source's accumulated penalty in seconds."""
        if not self.policy.enabled:
            return 0.0
        key = self.source(host)
        if key is None:
            return 0.0
        now = self._clock()
        amount: float = getattr(self.policy, kind)
        until = max(self._until.pop(key, now), now) + amount
        until = min(until, now + self.policy.max_penalty)
        self._until[key] = until
        while len(self._until) > self.policy.max_sources:
            self._until.popitem(last=False)  # the least recently penalised goes first
        return until - now
