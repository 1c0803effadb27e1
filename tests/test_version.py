"""Version strings and negotiation against PROTOCOL.md §2.2."""

from __future__ import annotations

import pytest

from ssh3.version import (
    OUR_VERSION,
    PROTOCOL_VERSION,
    REFERENCE_RETRY_VERSIONS,
    SOFTWARE_VERSION,
    SPEC_VERSION,
    Version,
    is_supported,
    parse_version,
    pick_retry_version,
    unsupported_version_body,
)

REF = "francoismichel/ssh3"
REF_0_1_7 = "SSH 3.0 francoismichel/ssh3 0.1.7 experimental_spec_version=alpha-00"


def v(s: str) -> Version:
    return parse_version(s)


def test_constants() -> None:
    assert PROTOCOL_VERSION == "3.0"
    assert SPEC_VERSION == "alpha-00"
    assert SOFTWARE_VERSION == (0, 1, 0)
    assert str(OUR_VERSION) == "SSH 3.0 ssh3-py 0.1.0 experimental_spec_version=alpha-00"
    assert OUR_VERSION.protocol_version == "3.0_alpha-00"
    assert is_supported(OUR_VERSION)


def test_parse_and_format_reference() -> None:
    ver = v(REF_0_1_7)
    assert ver == Version("SSH", 3, 0, "alpha-00", REF, (0, 1, 7))
    assert str(ver) == REF_0_1_7
    assert ver.protocol_version == "3.0_alpha-00"
    assert ver.software_version == "0.1.7"


def test_format_without_spec_omits_field() -> None:
    ver = Version("SSH", 3, 0, "", REF, (0, 1, 5))
    assert str(ver) == "SSH 3.0 francoismichel/ssh3 0.1.5"
    assert ver.protocol_version == "3.0"
    assert v(str(ver)) == ver


def test_parse_spec_in_protocol_field() -> None:
    ver = v("SSH 3.0_alpha-01 impl 1.2.3")
    assert (ver.major, ver.minor, ver.spec) == (3, 0, "alpha-01")
    assert ver.protocol_version == "3.0_alpha-01"
    # the extra field overrides the protocol-field suffix
    assert v("SSH 3.0_x impl 1.2.3 experimental_spec_version=y").spec == "y"


def test_parse_extra_fields() -> None:
    ver = v("SSH 3.0 impl 1.2.3 foo=bar experimental_spec_version=alpha-00 baz")
    assert ver.spec == "alpha-00"
    # not exactly key=value: skipped like the reference
    assert v("SSH 3.0 impl 1.2.3 experimental_spec_version=a=b").spec == ""
    # last occurrence wins
    assert v("SSH 3.0 i 0.0.1 experimental_spec_version=a experimental_spec_version=b").spec == "b"
    # any whitespace separates fields
    assert v("  SSH\t3.0  impl\n1.2.3 ").software == (1, 2, 3)


def test_parse_other_protocol_name_and_numbers() -> None:
    ver = v("FOO 4.2 x/y 10.20.30")
    assert ver == Version("FOO", 4, 2, "", "x/y", (10, 20, 30))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "SSH",
        "SSH 3.0 francoismichel/ssh3",
        "Go-http-client/3.0",
        "SSH 3 impl 0.1.0",
        "SSH 3.0.1 impl 0.1.0",
        "SSH a.0 impl 0.1.0",
        "SSH 3.0_a_b impl 0.1.0",
        "SSH 3.0 impl 0.1",
        "SSH 3.0 impl 0.1.0.0",
        "SSH 3.0 impl 0.1.x",
        "SSH 3.0 impl 0.1.-1",
        "SSH 3.0 impl 0.1.",
        "SSH 3.0 impl 0.1_0.0",
    ],
)
def test_parse_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid SSH version string"):
        parse_version(bad)


@pytest.mark.parametrize(
    ("s", "ok"),
    [
        (REF_0_1_7, True),
        ("SSH 3.0 myimpl/py 0.1.0 experimental_spec_version=alpha-00", True),
        ("SSH 3.0_alpha-00 myimpl/py 0.1.0", True),
        ("XYZ 3.0 other 9.9.9 experimental_spec_version=alpha-00", True),  # name unchecked
        ("SSH 3.0 myimpl/py 0.1.0", False),  # no spec, not the reference
        ("SSH 3.0 myimpl/py 0.1.0 experimental_spec_version=alpha-01", False),
        ("SSH 3.1 myimpl/py 0.1.0 experimental_spec_version=alpha-00", False),
        ("SSH 4.0 myimpl/py 0.1.0 experimental_spec_version=alpha-00", False),
        # special case: reference 0.1.x without spec, x <= 5 -> accepted iff x >= 3
        ("SSH 3.0 francoismichel/ssh3 0.1.5", True),
        ("SSH 3.0 francoismichel/ssh3 0.1.4", True),
        ("SSH 3.0 francoismichel/ssh3 0.1.3", True),
        ("SSH 3.0 francoismichel/ssh3 0.1.2", False),
        ("SSH 3.0 francoismichel/ssh3 0.1.0", False),
        # outside the special case the spec must be alpha-00
        ("SSH 3.0 francoismichel/ssh3 0.1.6", False),
        ("SSH 3.0 francoismichel/ssh3 0.2.0", False),
        ("SSH 3.0 francoismichel/ssh3 1.1.4", False),
        ("SSH 3.0 francoismichel/ssh3 0.1.2 experimental_spec_version=alpha-00", True),
        ("SSH 3.0 francoismichel/ssh3 0.1.4 experimental_spec_version=alpha-01", False),
        ("SSH 3.1 francoismichel/ssh3 0.1.4", False),
    ],
)
def test_is_supported(s: str, ok: bool) -> None:
    assert is_supported(parse_version(s)) is ok


def test_retry_list() -> None:
    assert [str(x) for x in REFERENCE_RETRY_VERSIONS] == [
        REF_0_1_7,
        "SSH 3.0 francoismichel/ssh3 0.1.5",
        "SSH 3.0 francoismichel/ssh3 0.1.4",
        "SSH 3.0 francoismichel/ssh3 0.1.3",
    ]


def test_pick_retry_version() -> None:
    # exact match wins over the first same-protocol entry
    assert pick_retry_version(v("SSH 3.0 francoismichel/ssh3 0.1.4")) == REFERENCE_RETRY_VERSIONS[2]
    assert pick_retry_version(v("SSH 3.0 francoismichel/ssh3 0.1.3")) == REFERENCE_RETRY_VERSIONS[3]
    # same protocol version ("3.0", no spec) -> first such entry, 0.1.5
    assert pick_retry_version(v("SSH 3.0 francoismichel/ssh3 0.1.2")) == REFERENCE_RETRY_VERSIONS[1]
    assert pick_retry_version(v("SSH 3.0 other 7.7.7")) == REFERENCE_RETRY_VERSIONS[1]
    # server speaks our protocol version: no retry
    assert pick_retry_version(v(REF_0_1_7)) is None
    assert pick_retry_version(OUR_VERSION) is None
    # nothing matches
    assert pick_retry_version(v("SSH 3.0 x 1.0.0 experimental_spec_version=alpha-01")) is None
    assert pick_retry_version(v("SSH 3.1 francoismichel/ssh3 0.1.4")) is None


def test_unsupported_version_body() -> None:
    peer = v("SSH 3.0 foo 1.0.0 experimental_spec_version=alpha-01")
    assert unsupported_version_body(peer) == (
        "Unsupported version: 3.0_alpha-01 not supported by server with version 3.0_alpha-00\n"
    )
    assert unsupported_version_body(v("SSH 3.0 foo 1.0.0")) == (
        "Unsupported version: 3.0 not supported by server with version 3.0_alpha-00\n"
    )
    assert unsupported_version_body(v("SSH 4.1_beta foo 1.0.0")).startswith(
        "Unsupported version: 4.1_beta not"
    )
