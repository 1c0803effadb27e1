from __future__ import annotations

import base64
import os
import stat

import pytest

from ssh3.certs import fingerprint, generate_self_signed
from ssh3.known_hosts import (
    KnownHostEntry,
    KnownHosts,
    canonical_host,
    default_path,
    mismatch_message,
)


@pytest.fixture(scope="module")
def ders(tmp_path_factory) -> list[bytes]:
    d = tmp_path_factory.mktemp("certs")
    return [generate_self_signed(str(d / f"c{i}"), str(d / f"k{i}")) for i in range(3)]


def _line(host: str, der: bytes) -> str:
    return f"{host} x509-certificate {base64.b64encode(der).decode()}\n"


def test_canonical_host() -> None:
    assert canonical_host("192.0.2.1", 443, "/ssh3-term") == "192.0.2.1:443/ssh3-term"
    assert canonical_host("example.org", 4443, "secret") == "example.org:4443/secret"
    assert canonical_host("::1", 443, "/ssh3-term") == "::1:443/ssh3-term"
    assert canonical_host("[::1]", 443, "/ssh3-term") == "::1:443/ssh3-term"
    assert canonical_host("h", 1, "") == "h:1/"


def test_default_path(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_path() == str(tmp_path / ".ssh3" / "known_hosts")


def test_missing_file_is_empty(tmp_path) -> None:
    kh = KnownHosts.load(str(tmp_path / "nope"))
    assert kh.entries == [] and kh.warnings == []
    assert kh.check("h:1/", b"x") == "unknown"


def test_round_trip_and_modes(tmp_path, ders) -> None:
    path = tmp_path / "home" / ".ssh3" / "known_hosts"
    old = os.umask(0)
    try:
        kh = KnownHosts.load(str(path))
        host = canonical_host("::1", 443, "/ssh3-term")
        entry = kh.add(host, ders[0])
    finally:
        os.umask(old)
    assert entry == KnownHostEntry(host, ders[0], 1)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == _line("::1:443/ssh3-term", ders[0])

    kh.add("other:443/ssh3-term", ders[1])
    assert kh.check(host, ders[0]) == "match"

    again = KnownHosts.load(str(path))
    assert again.warnings == []
    assert again.entries == [
        KnownHostEntry(host, ders[0], 1),
        KnownHostEntry("other:443/ssh3-term", ders[1], 2),
    ]
    assert again.check(host, ders[0]) == "match"
    assert again.check(host, ders[1]) == "mismatch"
    assert again.check("unknown:443/ssh3-term", ders[0]) == "unknown"


def test_add_does_not_change_existing_dir_mode(tmp_path, ders) -> None:
    os.chmod(tmp_path, 0o755)
    KnownHosts.load(str(tmp_path / "kh")).add("h:1/", ders[0])
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o755


def test_add_after_unterminated_line(tmp_path, ders) -> None:
    path = tmp_path / "kh"
    path.write_text(_line("a:1/", ders[0]).rstrip("\n"))
    kh = KnownHosts.load(str(path))
    entry = kh.add("b:1/", ders[1])
    assert entry.line_number == 2
    assert [e.line_number for e in KnownHosts.load(str(path)).entries] == [1, 2]


def test_add_rejects_bad_host(tmp_path, ders) -> None:
    kh = KnownHosts.load(str(tmp_path / "kh"))
    with pytest.raises(ValueError):
        kh.add("a b:1/", ders[0])
    with pytest.raises(ValueError):
        kh.add("", ders[0])
    assert not (tmp_path / "kh").exists()


def test_malformed_lines_warn(tmp_path, ders) -> None:
    path = tmp_path / "kh"
    good = base64.b64encode(ders[0]).decode()
    # a DER whose length is a multiple of 3 has no padding to strip: cut instead
    unpadded = good.rstrip("=") if good.endswith("=") else good[:-2]
    path.write_text(
        _line("a:1/", ders[0])  # 1
        + "only-two fields\n"  # 2
        + f"a:1/ ssh-ed25519 {good}\n"  # 3
        + "a:1/ x509-certificate !!!notbase64\n"  # 4
        + f"a:1/ x509-certificate {unpadded}\n"  # 5: missing padding
        + f"a:1/ x509-certificate {base64.b64encode(b'not der').decode()}\n"  # 6
        + "\n"  # 7: blank, silently ignored
        + f"  a:1/   x509-certificate   {good}  extra\n"  # 8
        + "  " + _line("b:1/", ders[1])  # 9: surrounding whitespace is fine
    )
    kh = KnownHosts.load(str(path))
    assert [(e.host, e.line_number) for e in kh.entries] == [("a:1/", 1), ("b:1/", 9)]
    lines = [w.split(": ", 1)[0] for w in kh.warnings]
    assert lines == [f"{path}:{n}" for n in (2, 3, 4, 5, 6, 8)]
    assert "ssh-ed25519" in kh.warnings[1]
    assert "base64" in kh.warnings[2]


def test_multiple_entries_add_up(tmp_path, ders) -> None:
    path = tmp_path / "kh"
    path.write_text(
        _line("h:443/ssh3-term", ders[0])
        + _line("x:443/ssh3-term", ders[2])
        + _line("h:443/ssh3-term", ders[1])
    )
    kh = KnownHosts.load(str(path))
    entries = kh.entries_for("h:443/ssh3-term")
    assert [(e.der, e.line_number) for e in entries] == [(ders[0], 1), (ders[1], 3)]
    assert kh.check("h:443/ssh3-term", ders[0]) == "match"
    assert kh.check("h:443/ssh3-term", ders[1]) == "match"
    assert kh.check("h:443/ssh3-term", ders[2]) == "mismatch"
    assert kh.check("h:443/other", ders[0]) == "unknown"
    kh.add("h:443/ssh3-term", ders[2])
    assert kh.check("h:443/ssh3-term", ders[2]) == "match"
    assert [e.line_number for e in kh.entries_for("h:443/ssh3-term")] == [1, 3, 4]


def test_mismatch_message(ders) -> None:
    msg = mismatch_message("/home/a/.ssh3/known_hosts", "127.0.0.1:4433/ssh3-term", [3], ders[0])
    assert "127.0.0.1:4433/ssh3-term" in msg
    assert fingerprint(ders[0]) in msg
    assert "/home/a/.ssh3/known_hosts line 3" in msg
    assert "remove line 3 of /home/a/.ssh3/known_hosts" in msg
    assert "intercepting" in msg
    msg2 = mismatch_message("/kh", "h:1/", [5, 2], ders[0])
    assert "remove lines 2 and 5 of /kh" in msg2
