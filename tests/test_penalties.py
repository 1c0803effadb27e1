"""PenaltyBox: accumulation, threshold, expiry, exemptions, /64 grouping, bounds."""

from __future__ import annotations

import pytest

from ssh3_server.penalties import PenaltyBox, PenaltyPolicy, parse_networks


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def box(**kw: object) -> tuple[PenaltyBox, Clock]:
    clock = Clock()
    return PenaltyBox(PenaltyPolicy(**kw), clock), clock  # type: ignore[arg-type]


def test_refusal_starts_at_the_threshold_and_expires() -> None:
    b, clock = box()
    for _ in range(2):
        b.penalise("192.0.2.7", "authfail")
    assert b.remaining("192.0.2.7") == 0  # 10 s < min 15 s: still allowed
    b.penalise("192.0.2.7", "authfail")
    assert b.remaining("192.0.2.7") == pytest.approx(15)
    assert b.remaining("192.0.2.8") == 0  # another source is not affected
    clock.now += 0.5
    assert b.remaining("192.0.2.7") == 0  # below the threshold again: may try
    clock.now += 20
    assert b.remaining("192.0.2.7") == 0


def test_penalty_is_capped() -> None:
    b, _ = box(max_penalty=60)
    for _ in range(100):
        b.penalise("192.0.2.7", "grace_exceeded")
    assert b.remaining("192.0.2.7") == pytest.approx(60)


def test_ipv6_sources_are_grouped_by_64_and_mapped_v4_is_v4() -> None:
    b, _ = box()
    for _ in range(4):
        b.penalise("2001:db8:1:2::10", "authfail")
    assert b.remaining("2001:db8:1:2:ffff::1") > 0
    assert b.remaining("2001:db8:1:3::10") == 0
    for _ in range(4):
        b.penalise("::ffff:198.51.100.1", "authfail")
    assert b.remaining("198.51.100.1") > 0


def test_exempt_networks_and_disabled_policy() -> None:
    b, _ = box(exempt=parse_networks(["127.0.0.0/8, ::1"]))
    for _ in range(10):
        b.penalise("127.0.0.1", "authfail")
        b.penalise("::1", "authfail")
    assert b.remaining("127.0.0.1") == 0 and b.remaining("::1") == 0
    off, _ = box(enabled=False)
    for _ in range(10):
        off.penalise("192.0.2.1", "authfail")
    assert off.remaining("192.0.2.1") == 0


def test_table_is_bounded() -> None:
    b, _ = box(max_sources=100)
    for i in range(1000):
        b.penalise(f"10.0.{i // 256}.{i % 256}", "authfail")
    assert len(b._until) == 100


def test_bad_exemption_is_named() -> None:
    with pytest.raises(ValueError, match="not-a-net"):
        parse_networks(["10.0.0.0/8,not-a-net"])
