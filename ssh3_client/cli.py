"""`ssh3 [flags] [user@]host[:port][/path] [command ...]`"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import sys
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

USAGE = """\
usage: ssh3 [flags] [user@]host[:port][/path] [command ...]

Connect to an SSH3 server (SSH over HTTP/3) and run a shell or a command.
Port 443 and path /ssh3-term are the defaults.

flags:
  -i, -privkey FILE    private key to authenticate with (repeatable); default:
                       ~/.ssh/id_ed25519, ~/.ssh/id_ecdsa, ~/.ssh/id_rsa in that order.
                       The agent's keys ($SSH_AUTH_SOCK) are tried first.
  -pubkey-for-agent FILE  use only the agent key with this public key (repeatable)
  -use-password        log in with a password (asked on the terminal, or SSH_ASKPASS)
  -l USER              remote user (default: from the target, else the local user)
  -p PORT              port (default 443)
  -url-path PATH       secret URL path (default /ssh3-term)
  -t                   force a pseudo-terminal
  -T                   disable the pseudo-terminal
  -o OPTION=VALUE      StrictHostKeyChecking=yes|accept-new|no|ask,
                       UserKnownHostsFile=FILE, IdentitiesOnly=yes (no agent keys
                       but those of the key files), IdentityAgent=SOCKET|none,
                       BatchMode=yes, NumberOfPasswordPrompts=N
  -L [BIND:]PORT:HOST:HOSTPORT  forward local TCP port PORT to HOST:HOSTPORT through
                       the server (OpenSSH syntax; HOST is resolved here); repeatable
  -forward-tcp LPORT/IP@PORT  the same, reference syntax (listens on 127.0.0.1)
  -forward-udp LPORT/IP@PORT  forward local UDP port LPORT to IP:PORT; repeatable
  -N                   no command or shell: only forward, until interrupted
  -insecure            do not verify the server's certificate
  -quic-backend NAME   aioquic (default) or qh3 (also $SSH3_QUIC_BACKEND)
  -v                   debug logging on stderr
  -version             print the version and exit
  -h, -help            this help

Exit status: the remote command's, 128+N if it was killed by signal N,
255 if the connection or authentication failed.
"""

_VALUE_FLAGS = {"-i": "identity", "-privkey": "identity",
                "-pubkey-for-agent": "pubkey_for_agent", "-l": "user", "-p": "port",
                "-o": "option", "-url-path": "url_path", "-quic-backend": "backend",
                "-L": "forward_L", "-forward-tcp": "forward_tcp",
                "-forward-udp": "forward_udp"}
_BOOL_FLAGS = {"-t": "force_tty", "-T": "no_tty", "-insecure": "insecure", "-v": "verbose",
               "-version": "version", "-h": "help", "-help": "help", "--help": "help",
               "-N": "no_command", "-use-password": "use_password"}


class UsageError(Exception):
    pass


@dataclass
class Args:
    identities: list[str] = field(default_factory=list)
    pubkeys_for_agent: list[str] = field(default_factory=list)
    user: str | None = None
    port: int | None = None
    url_path: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    force_tty: bool = False
    no_tty: bool = False
    insecure: bool = False
    verbose: bool = False
    version: bool = False
    help: bool = False
    backend: str | None = None
    target: str | None = None
    command: list[str] = field(default_factory=list)
    forwards: list = field(default_factory=list)  # ssh3_client.forwarding.ForwardSpec
    no_command: bool = False
    use_password: bool = False
    target_host: str = ""


def parse_args(argv: list[str]) -> Args:
    args = Args()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, inline = arg.partition("=")
        if name.startswith("--") and name not in _BOOL_FLAGS:
            name = name[1:]
        if name in _BOOL_FLAGS and not eq:
            setattr(args, _BOOL_FLAGS[name], True)
            i += 1
            continue
        if name in _VALUE_FLAGS:
            if eq:
                value = inline
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise UsageError(f"flag {name} needs a value")
            _set_value(args, _VALUE_FLAGS[name], value)
            i += 1
            continue
        # OpenSSH-style attached values: -p2222, -ifile, -lalice
        if len(arg) > 2 and arg[:2] in ("-i", "-l", "-p", "-o", "-L") and not eq:
            _set_value(args, _VALUE_FLAGS[arg[:2]], arg[2:])
            i += 1
            continue
        raise UsageError(f"unknown flag {arg}")
    rest = argv[i:]
    if rest:
        args.target = rest[0]
        args.command = rest[1:]
    return args


def _set_value(args: Args, key: str, value: str) -> None:
    if key == "identity":
        args.identities.append(value)
    elif key.startswith("forward_"):
        from .forwarding import ForwardError, parse_local_forward, parse_reference_spec

        try:
            args.forwards.append(parse_local_forward(value) if key == "forward_L"
                                 else parse_reference_spec(value, key[-3:]))  # type: ignore[arg-type]
        except ForwardError as exc:
            raise UsageError(str(exc)) from None
    elif key == "pubkey_for_agent":
        args.pubkeys_for_agent.append(value)
    elif key == "port":
        try:
            port = int(value)
        except ValueError:
            raise UsageError(f"bad port {value!r}") from None
        if not 0 < port < 65536:
            raise UsageError(f"bad port {value!r}")
        args.port = port
    elif key == "option":
        opt, sep, val = value.partition("=")
        if not sep:
            opt, _, val = value.partition(" ")
        args.options.setdefault(opt.strip().lower(), val.strip())
    else:
        setattr(args, key, value)


@dataclass
class Target:
    host: str
    port: int
    path: str
    user: str


def parse_target(text: str, args: Args) -> Target:
    url = urlsplit(text if "://" in text else "https://" + text)
    if url.scheme != "https" or not url.hostname:
        raise UsageError(f"bad destination {text!r}: expected [user@]host[:port][/path]")
    try:
        url_port = url.port
    except ValueError:
        raise UsageError(f"bad port in {text!r}") from None
    query_user = parse_qs(url.query).get("user", [None])[0]
    user = (unquote(url.username) if url.username else None) or query_user or args.user \
        or getpass.getuser()
    path = url.path or args.url_path or "/ssh3-term"
    if not path.startswith("/"):
        path = "/" + path
    return Target(url.hostname, url_port or args.port or 443, path, user)


async def _run(args: Args, target: Target) -> int:
    from ssh3.aio.client import (
        ConnectParams,
        SSH3ClientError,
        establish,
        open_connection,
        wait_settings,
    )
    from ssh3.known_hosts import canonical_host, default_path

    from .forwarding import ForwardError, Forwarding, forward_until_stopped
    from .hostkeys import HostKeyVerifier
    from .identities import load_identities
    from .session import SessionRequest, run_session

    args.target_host = target.host
    identities = await load_identities(args)
    known_hosts = os.path.expanduser(args.options.get("userknownhostsfile", "") or default_path())
    strict = args.options.get("stricthostkeychecking", "ask").lower()
    strict = {"off": "no", "false": "no", "true": "yes", "on": "yes"}.get(strict, strict)
    verifier = HostKeyVerifier(known_hosts, canonical_host(target.host, target.port, target.path),
                               strict, hostname=target.host)
    params = ConnectParams(host=target.host, port=target.port, path=target.path,
                           user=target.user, identities=identities, backend=args.backend,
                           insecure=args.insecure, verify_certificate=verifier)
    command = " ".join(args.command).encode() if args.command else None
    want_pty = (command is None and os.isatty(0)) or args.force_tty
    if args.no_tty:
        want_pty = False
    request = SessionRequest(command=command, pty=want_pty, term=os.environ.get("TERM", ""))
    try:
        async with open_connection(params) as protocol:
            conv = await establish(protocol, params)
            await wait_settings(protocol)
            # listeners are up before the session starts, and close when it ends
            async with Forwarding(conv, args.forwards):
                if args.no_command:
                    return await forward_until_stopped(conv)
                code = await run_session(conv, request)
                return code
    except ForwardError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return 255
    except SSH3ClientError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return exc.exit_code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"ssh3: {exc}\n\n{USAGE}", file=sys.stderr)
        return 255
    if args.help:
        print(USAGE, end="")
        return 0
    if args.version:
        from ssh3.version import OUR_VERSION

        print(f"ssh3 version {OUR_VERSION.implementation} "
              f"{'.'.join(map(str, OUR_VERSION.software))}")
        return 0
    if not args.target:
        print(USAGE, end="", file=sys.stderr)
        return 255
    if args.no_command and args.command:
        print("ssh3: -N runs no command: give either -N or a command", file=sys.stderr)
        return 255
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="ssh3: %(name)s: %(message)s")
    try:
        target = parse_target(args.target, args)
    except UsageError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return 255
    try:
        code = asyncio.run(_run(args, target))
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # our stdout went away (`ssh3 host cmd | head`): stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        return 255
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
