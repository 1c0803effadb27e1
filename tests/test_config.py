"""ssh_config parsing and resolution (ssh3_client/config.py), and the OpenSSH
argument shapes of the `ssh3` command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssh3_client.cli import UsageError, parse_args
from ssh3_client.config import (
    ConfigError,
    apply_to_args,
    match_pattern_list,
    resolve,
    split_line,
)


def cfg(tmp_path: Path, text: str, name: str = "config") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_split_line_forms() -> None:
    assert split_line("HostName example.org") == ("hostname", ["example.org"])
    assert split_line("  Port=2222") == ("port", ["2222"])
    assert split_line("Port = 2222") == ("port", ["2222"])
    assert split_line('IdentityFile "/a b/key"') == ("identityfile", ["/a b/key"])
    assert split_line("# comment") is None
    assert split_line("   ") is None


def test_patterns_and_negation() -> None:
    assert match_pattern_list("web1.example.org", ["*.example.org"])
    assert match_pattern_list("WEB1", ["web?"])
    assert not match_pattern_list("db.example.org", ["*.example.org", "!db.*"])
    assert not match_pattern_list("x", ["!y"])  # only negations never match
    assert not match_pattern_list("a[1]", ["a1"])


def test_first_value_wins_and_command_line_first(tmp_path: Path) -> None:
    path = cfg(tmp_path, """\
Port 1000
Host alias
    HostName real.%h.example
    User alice
    Port 2000
    IdentityFile ~/.ssh/one_%r_%h
Host *
    User bob
    IdentityFile %d/two
    URLPath /secret
""")
    r = resolve("alias", config_file=path, home="/home/me", local_user="me")
    assert r.get("hostname") == "real.alias.example"
    assert (r.get("user"), r.get("port"), r.get("urlpath")) == ("alice", "1000", "/secret")
    assert r.get_all("identityfile") == ["/home/me/.ssh/one_alice_real.alias.example",
                                         "/home/me/two"]
    r = resolve("alias", config_file=path, options={"user": "carol"}, port=7, home="/h")
    assert (r.get("user"), r.get("port")) == ("carol", "7")
    r = resolve("other", config_file=path, home="/h")
    assert r.get("hostname") is None and r.get("user") == "bob"


def test_match_and_include(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    cfg(tmp_path, "Host inc\n    Port 4444\n", "conf.d/a.conf")
    path = cfg(tmp_path, f"""\
Include {tmp_path}/conf.d/*.conf
Match originalhost short
    HostName long.example.org
Match host long.example.org user root
    Port 1
Match host long.example.org !user root
    Port 2
Match localuser nobody-here
    User nope
Match exec "true"
    User never
Match all
    LogLevel QUIET
""")
    r = resolve("short", config_file=path, user="alice", home=str(tmp_path), local_user="me")
    assert (r.get("hostname"), r.get("port"), r.get("user")) == ("long.example.org", "2", "alice")
    assert r.get("loglevel") == "QUIET"
    assert resolve("inc", config_file=path, home=str(tmp_path)).get("port") == "4444"


def test_relative_include_under_dot_ssh(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    (ssh / "extra").write_text("Host *\n    URLPath /from-include\n")
    (ssh / "config").write_text("Include extra\n")
    r = resolve("h", home=str(tmp_path))
    assert r.get("urlpath") == "/from-include"


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        resolve("h", config_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError):
        resolve("h", config_file=cfg(tmp_path, 'HostName "unterminated\n'))
    assert resolve("h", config_file="none", options={"port": "9"}).get("port") == "9"


def test_apply_precedence_url_then_flags_then_config(tmp_path: Path) -> None:
    path = cfg(tmp_path, """\
Host box
    HostName 10.0.0.1
    User alice
    Port 2000
    URLPath /cfg
    LocalForward 8080 localhost:80
    RequestTTY no
""")
    args = parse_args(["-F", path, "-p", "3000", "bob@box/url"])
    apply_to_args(args)
    assert (args.hostname, args.port, args.url_path, args.user) == ("10.0.0.1", 3000, "/cfg",
                                                                    "bob")
    assert args.no_tty and len(args.forwards) == 1
    from ssh3_client.cli import parse_target

    target = parse_target(args.target, args)
    assert (target.host, target.port, target.path, target.user) == ("10.0.0.1", 3000, "/url",
                                                                     "bob")
    # scp's -oClearAllForwardings=yes wins over the config's LocalForward
    args = parse_args(["-F", path, "-oClearAllForwardings=yes", "box"])
    apply_to_args(args)
    assert args.forwards == [] and args.port == 2000


def test_openssh_argument_shapes() -> None:
    # sftp
    a = parse_args(["-oForwardX11 no", "-oPermitLocalCommand no", "-oClearAllForwardings yes",
                    "-obatchmode yes", "-oForwardAgent no", "-oPort 2222", "-l", "bob", "-s",
                    "--", "host", "sftp"])
    assert a.options["batchmode"] == "yes" and a.options["port"] == "2222"
    assert (a.user, a.subsystem, a.target, a.command) == ("bob", True, "host", ["sftp"])
    # scp -O, rsync, git
    a = parse_args(["-x", "-oRequestTTY=no", "-p", "2200", "--", "host", "scp", "-t", "/x"])
    assert (a.port, a.command) == (2200, ["scp", "-t", "/x"])
    a = parse_args(["-G", "-o", "SendEnv=GIT_PROTOCOL", "-p", "22", "u@host"])
    assert a.print_config and a.port == 22
    # bundles, attached values, -vvv, ignored and warned flags
    a = parse_args(["-nTqxaC46", "-vvv", "-p2201", "-lalice", "-e", "none", "-X", "h", "c"])
    assert a.null_stdin and a.no_tty and a.quiet and a.verbose
    assert (a.port, a.user, a.escape_char) == (2201, "alice", "none")
    assert any("X11" in w for w in a.warnings)
    # the reference's long single-dash flags still win over bundling
    a = parse_args(["-insecure", "-version", "h"])
    assert a.insecure and a.version
    # -J / -proxy-jump take the jump list (ssh3_client/proxyjump.py)
    a = parse_args(["-J", "u@jump:4443/p,second", "-proxy-jump=x", "h"])
    assert a.proxy_jump == "x" and a.target == "h"
    assert parse_args(["-Jjump", "h"]).proxy_jump == "jump"
    for bad in (["-R", "1:h", "h"], ["-Z", "h"], ["-nZ", "h"], ["-w", "0", "h"]):
        with pytest.raises(UsageError):
            parse_args(bad)
