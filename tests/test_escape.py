"""The escape-sequence byte filter (ssh3_client.escape.EscapeFilter), byte by byte."""

from __future__ import annotations

import pytest

from ssh3_client.escape import (
    COMMAND,
    DISCONNECT,
    HELP,
    LIST,
    SUSPEND,
    EscapeFilter,
    help_text,
    parse_escape_char,
)

TILDE = ord("~")


def feed_bytes(f: EscapeFilter, data: bytes) -> tuple[bytes, list[str]]:
    """One byte per read: escapes split across reads must still be seen."""
    out, actions = bytearray(), []
    for b in data:
        o, a = f.feed(bytes([b]))
        out += o
        actions += a
        out += f.take_rest()  # nothing follows a single byte
    return bytes(out), actions


@pytest.mark.parametrize("feeder", ["whole", "bytewise"])
@pytest.mark.parametrize("data, sent, actions", [
    (b"~.", b"", [DISCONNECT]),
    (b"ls\r~.", b"ls\r", [DISCONNECT]),
    (b"ls\n~.", b"ls\n", [DISCONNECT]),
    (b"echo a~.b\r", b"echo a~.b\r", []),  # not at a line start
    (b"~~", b"~", []),
    (b"~~.", b"~.", []),  # the sent ~ does not start an escape
    (b"~x", b"~x", []),
    (b"~?", b"", [HELP]),
    (b"~?~.", b"", [HELP, DISCONNECT]),  # still at a line start after ~?
    (b"~#", b"", [LIST]),
    (b"~\x1a", b"", [SUSPEND]),
    (b"~C", b"", [COMMAND]),
    (b"\r~~\r~x", b"\r~\r~x", []),
    (b"a\r\r~?", b"a\r\r", [HELP]),
])
def test_filter(feeder, data, sent, actions):
    f = EscapeFilter(TILDE)
    out, got = f.feed(data) if feeder == "whole" else feed_bytes(f, data)
    assert (out, got) == (sent, actions)


def test_split_across_reads():
    f = EscapeFilter(TILDE)
    assert f.feed(b"pwd\r~") == (b"pwd\r", [])
    assert f.pending
    assert f.feed(b".") == (b"", [DISCONNECT])


def test_rest_after_stopping_action():
    f = EscapeFilter(TILDE)
    assert f.feed(b"~C-L 1:h:2\rls") == (b"", [COMMAND])
    assert f.take_rest() == b"-L 1:h:2\rls"
    assert f.take_rest() == b""
    # after the command line, still at a line start
    assert f.feed(b"~.") == (b"", [DISCONNECT])


def test_disabled():
    f = EscapeFilter(None)
    assert f.feed(b"~.") == (b"~.", [])
    assert f.feed(b"\r~?~C") == (b"\r~?~C", [])


def test_custom_char():
    f = EscapeFilter(ord("%"))
    assert f.feed(b"~.") == (b"~.", [])
    assert f.feed(b"\r%.") == (b"\r", [DISCONNECT])
    f = EscapeFilter(parse_escape_char("^]"))
    assert f.feed(b"\x1d\x1d\r\x1d?") == (b"\x1d\r", [HELP])


def test_parse_escape_char():
    assert parse_escape_char(None) == TILDE
    assert parse_escape_char("~") == TILDE
    assert parse_escape_char("none") is None
    assert parse_escape_char("NONE") is None
    assert parse_escape_char("^A") == 1
    assert parse_escape_char("^]") == 0x1D
    for bad in ("", "ab", "é"):
        with pytest.raises(ValueError):
            parse_escape_char(bad)


def test_help_names_the_escape_char():
    assert " ~.   - terminate connection" in help_text(TILDE)
    assert " ^].   - terminate connection" in help_text(0x1D)
    assert "\r\n" in help_text(TILDE)
