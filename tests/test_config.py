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


def test_every_option_of_the_issue(tmp_path: Path) -> None:
    """One config file with every option ssh3 reads (issue 5): each lands where the
    client uses it. ProxyJump, UDPProxyJump and RemoteForward are parsed here and
    wired by their own features."""
    from ssh3_client.environment import collect
    from ssh3_client.mux_client import plan

    path = cfg(tmp_path, """\
Host box
    HostName 10.1.2.3
    User alice
    Port 4433
    IdentityFile ~/.ssh/box_key
    IdentitiesOnly yes
    URLPath /secret-path
    UDPProxyJump jumpbox
    ProxyJump bastion
    LocalForward 8080 localhost:80
    RemoteForward 9090 localhost:90
    DynamicForward 1080
    ForwardAgent yes
    ServerAliveInterval 5
    ServerAliveCountMax 4
    StrictHostKeyChecking accept-new
    UserKnownHostsFile ~/kh_%h
    SendEnv LANG LC_*
    SendEnv EDITOR
    SetEnv FOO="a b" BAR=c
    RequestTTY force
    EscapeChar ^A
    ControlMaster auto
    ControlPath ~/.ssh3/cm-%r@%h:%p-%C
    ControlPersist 10m
    LogLevel DEBUG2
""")
    args = parse_args(["-F", path, "box", "true"])
    resolved = apply_to_args(args)
    home = str(Path.home())
    assert (args.hostname, args.user, args.port, args.url_path) == ("10.1.2.3", "alice", 4433,
                                                                    "/secret-path")
    assert args.identities == [f"{home}/.ssh/box_key"]
    assert args.options["identitiesonly"] == "yes"
    assert args.options["serveraliveinterval"] == "5"
    assert args.options["serveralivecountmax"] == "4"
    assert args.options["stricthostkeychecking"] == "accept-new"
    assert args.options["userknownhostsfile"] == f"{home}/kh_10.1.2.3"
    assert len(args.forwards) == 1 and args.forwards[0].listen_port == 8080
    assert len(args.dynamic) == 1 and args.forward_agent
    assert args.force_tty and args.escape_char == "^A" and args.verbose
    assert resolved.get("proxyjump") == "bastion" and resolved.get("udpproxyjump") == "jumpbox"
    assert resolved.get_all("remoteforward") == ["9090 localhost:90"]
    assert args.send_env == ["LANG", "LC_*", "EDITOR"]
    assert args.set_env == ["FOO=a b", "BAR=c"]
    assert collect(args.send_env, args.set_env, {"LC_ALL": "C", "HOME": "/x"}) == [
        ("LC_ALL", b"C"), ("FOO", b"a b"), ("BAR", b"c")]
    mux = plan(args.options, args.master)
    assert (mux.master, mux.persist) == ("auto", 600)
    assert mux.path is not None and mux.path.startswith(f"{home}/.ssh3/cm-alice@10.1.2.3:4433-")
    assert len(mux.path.rsplit("-", 1)[1]) == 40  # %C: a SHA-1 in hex


def test_multiplexing_flags(tmp_path: Path) -> None:
    args = parse_args(["-M", "-S", "/tmp/ctl-%h", "-O", "check", "box"])
    assert (args.master, args.mux_command) == (1, "check")
    apply_to_args(args)  # -S is a ControlPath: tokens expanded like the config's
    assert args.options["controlpath"] == "/tmp/ctl-box"
    assert parse_args(["-MM", "h"]).master == 2
    args = parse_args(["-F", "none", "-o", "SetEnv=A=1 B='x y'", "-o", "SendEnv=LANG", "h"])
    apply_to_args(args)
    assert (args.set_env, args.send_env) == (["A=1", "B=x y"], ["LANG"])


def test_records_behave_like_dataclasses() -> None:
    """cli.Args / cli.Target / config.Resolved use ssh3_client.records (start-up)."""
    from ssh3_client.cli import Args, Target
    from ssh3_client.records import field, record

    @record
    class Point:
        x: int
        y: int = 0
        tags: list[str] = field(default_factory=list)

    a, b = Point(1), Point(1, 0)
    assert a == b and a.tags == [] and a.tags is not b.tags
    assert repr(Point(2, y=3)) == "Point(x=2, y=3, tags=[])"
    assert Point(x=1, tags=["t"]).tags == ["t"] and Point(1) != Point(2)
    for bad in (lambda: Point(), lambda: Point(1, 2, [], 4), lambda: Point(1, z=2),
                lambda: Point(1, x=1)):
        with pytest.raises(TypeError):
            bad()
    assert Args().identities == [] and Args().identities is not Args().identities
    assert Target("h", 1, "/p", "u") == Target("h", 1, "/p", "u")
