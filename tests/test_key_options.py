"""authorized_keys options (ssh3.auth.key_options), how they narrow Permissions
(ssh3_server.key_policy) and what Permissions then allow."""

from __future__ import annotations

import calendar
import time

import pytest

from ssh3.auth.authorized_keys import parse_identities
from ssh3.auth.key_options import (
    KeyOptions,
    OptionError,
    match_from,
    match_source_address,
    parse_expiry_time,
    parse_options,
)
from ssh3_server.key_policy import narrow_by_options, refusal_of_line
from ssh3_server.permissions import Permissions

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4 a@b"


def opts(text: str) -> KeyOptions:
    ids, warnings = parse_identities(f"{text} {KEY}\n", "ak")
    assert warnings == [] and len(ids) == 1, warnings
    return ids[0].options  # type: ignore[union-attr]


def bad(text: str) -> str:
    ids, warnings = parse_identities(f"# comment\n{text} {KEY}\n", "/home/u/.ssh/authorized_keys")
    assert ids == [] and len(warnings) == 1
    assert warnings[0].startswith("/home/u/.ssh/authorized_keys:2: ")
    return warnings[0].split(": ", 1)[1]


# ---------------------------------------------------------------- parsing


def test_flags_in_order_restrict_then_reenable():
    o = opts("restrict,pty")
    assert (o.permit_pty, o.permit_port_forwarding, o.permit_agent_forwarding) == (
        True, False, False)
    o = opts("pty,restrict")
    assert not o.permit_pty
    o = opts("restrict,port-forwarding,agent-forwarding")
    assert (o.permit_pty, o.permit_port_forwarding, o.permit_agent_forwarding) == (
        False, True, True)
    o = opts("no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-user-rc")
    assert (o.permit_pty, o.permit_port_forwarding, o.permit_agent_forwarding) == (
        False, False, False)


def test_quoted_values_commas_and_escaped_quotes():
    o = opts('command="echo \\"a, b\\"",from="127.0.0.1,!10.*",principals="x, y"')
    assert o.command == 'echo "a, b"'
    assert o.from_patterns == "127.0.0.1,!10.*"
    assert o.principals == ("x", "y")


def test_repeated_options():
    o = opts('permitopen="h:1",PermitOpen="[::1]:22",permitopen="*:*",'
             'permitlisten="8080",permitlisten="localhost:*",'
             'environment="A=1",environment="B=x=y",environment="A=2"')
    assert o.permit_open == (("h", 1), ("::1", 22), ("*", None))
    assert o.permit_listen == (("*", 8080), ("localhost", None))
    assert o.environment == (("A", "1"), ("B", "x=y"))  # first A wins, as sshd
    assert opts('permitopen="none"').permit_open == ()


def test_expiry_time_earliest_wins():
    o = opts('expiry-time="20300101Z",expiry-time="202001011200Z"')
    assert o.expiry_time == calendar.timegm((2020, 1, 1, 12, 0, 0))
    assert parse_expiry_time("20200101123456Z") == calendar.timegm((2020, 1, 1, 12, 34, 56))
    assert parse_expiry_time("20200101") == int(time.mktime((2020, 1, 1, 0, 0, 0, 0, 0, -1)))


@pytest.mark.parametrize("text, reason", [
    ("command=echo", "command= value must be double-quoted"),
    ('command="a",command="b"', "more than one command= option"),
    ('from="1.2.3.4",from="5.6.7.8"', "more than one from= option"),
    ('from="10.0.0.1/8"', "network '10.0.0.1/8' has bits set beyond its mask"),
    ('from=""', "from= has an empty pattern"),
    ("no-such-option", "unknown option 'no-such-option'"),
    ('no-such-option="x"', "unknown option 'no-such-option'"),
    ("no-pty=\"x\"", "option 'no-pty' takes no value"),
    ("command", "option 'command' needs a value"),
    ('expiry-time="2020"', "expiry-time must be YYYYMMDD[HHMM[SS]][Z]"),
    ('expiry-time="20201340"', "expiry-time is not a valid date"),
    ('permitopen="host"', "permitopen= needs host:port"),
    ('permitopen="host:0"', "permitopen= has a bad port"),
    ('permitopen="host:99999"', "permitopen= has a bad port"),
    ('permitlisten="[::1"', "permitlisten= has a bad [address]:port"),
    ('environment="1A=x"', "environment= must be NAME=value"),
    ('environment="novalue"', "environment= must be NAME=value"),
    ('principals="a,,b"', "principals= has an empty entry"),
    ('tunnel="x"', "tunnel= must be a number"),
])
def test_malformed_lines_are_skipped_with_file_and_line(text, reason):
    assert bad(text) == reason


def test_parse_options_directly():
    assert parse_options([]) == KeyOptions()
    assert KeyOptions().is_empty
    with pytest.raises(OptionError):
        parse_options(['command="a"x"'])


# ---------------------------------------------------------------- from= and source-address


@pytest.mark.parametrize("patterns, address, expected", [
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1", "::ffff:127.0.0.1", True),
    ("127.0.0.0/8", "127.0.0.1", True),
    ("10.0.0.0/8", "127.0.0.1", False),
    ("127.0.0.*", "127.0.0.1", True),
    ("127.0.0.?", "127.0.0.12", False),
    ("*,!127.0.0.1", "127.0.0.1", False),
    ("!127.0.0.1,*", "127.0.0.1", False),
    ("!10.0.0.0/8,127.0.0.1", "127.0.0.1", True),
    ("!10.0.0.0/8", "127.0.0.1", False),  # a negation alone allows nothing
    ("::1", "::1", True),
    ("::/0", "127.0.0.1", False),
    ("*.example.com", "127.0.0.1", False),  # no reverse DNS
])
def test_match_from(patterns, address, expected):
    assert match_from(patterns, address) is expected


def test_match_source_address():
    assert match_source_address("127.0.0.1/32,10.0.0.0/8", "127.0.0.1")
    assert not match_source_address("10.0.0.0/8", "127.0.0.1")
    assert not match_source_address("127.0.0.*", "127.0.0.1")  # no wildcards in certs
    assert not match_source_address("127.0.0.1/8", "127.0.0.1")  # bad network refuses


# ---------------------------------------------------------------- refusal and narrowing


def test_refusal_of_line():
    assert refusal_of_line(opts('from="127.0.0.1"'), "127.0.0.1") is None
    assert refusal_of_line(opts('from="10.0.0.0/8"'), "127.0.0.1") == \
        "client address not allowed by from="
    assert refusal_of_line(opts('expiry-time="20000101Z"'), "127.0.0.1") == \
        "key expired (expiry-time)"
    assert refusal_of_line(opts('expiry-time="29990101Z"'), "127.0.0.1") is None
    assert refusal_of_line(opts("verify-required"), "127.0.0.1") == \
        "verify-required needs a FIDO key"


def test_narrowing_never_widens():
    base = Permissions(allow_agent_forwarding=False, allow_udp_forwarding=False)
    p = narrow_by_options(base, opts("restrict,pty,agent-forwarding,port-forwarding"), False)
    assert p.allow_pty and p.allow_tcp_forwarding and p.allow_remote_forwarding
    assert not p.allow_agent_forwarding  # the server said no
    assert not p.allow_udp_forwarding
    p = narrow_by_options(Permissions(), opts('restrict,command="id"'), False)
    assert not (p.allow_pty or p.allow_tcp_forwarding or p.allow_udp_forwarding
                or p.allow_remote_forwarding or p.allow_agent_forwarding)
    assert p.forced_command == "id"
    with pytest.raises(ValueError):
        Permissions(allow_pty=False).narrowed(allow_pty=True)


def test_environment_only_with_the_server_flag():
    o = opts('environment="FOO=bar"')
    assert narrow_by_options(Permissions(), o, False).environment == ()
    assert narrow_by_options(Permissions(), o, True).environment == (("FOO", "bar"),)


def test_permits_open_and_listen():
    p = narrow_by_options(Permissions(), opts(
        'permitopen="localhost:22",permitopen="db:*",permitlisten="8080",'
        'permitlisten="127.0.0.1:9000"'), False)
    assert p.permits_open("LOCALHOST", 22)
    assert not p.permits_open("localhost", 23)
    assert p.permits_open("db", 5432)
    assert not p.permits_open("other", 22)
    assert p.permits_udp("db", 53) and not p.permits_udp("other", 53)
    assert p.permits_listen("0.0.0.0", 8080) and p.permits_listen("localhost", 8080)
    assert p.permits_listen("127.0.0.1", 9000)
    assert not p.permits_listen("0.0.0.0", 9000)
    assert not p.permits_listen("127.0.0.1", 8081)
    assert Permissions().permits_listen("0.0.0.0", 1)
    closed = narrow_by_options(Permissions(), opts("no-port-forwarding"), False)
    assert not closed.permits_open("h", 1) and not closed.permits_listen("h", 1)
    assert not closed.permits_udp("h", 1)
    none = narrow_by_options(Permissions(), opts('permitopen="none",permitlisten="none"'),
                             False)
    assert not none.permits_open("h", 1) and not none.permits_listen("h", 1)
