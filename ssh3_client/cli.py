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
                       ~/.ssh/id_ed25519, ~/.ssh/id_ecdsa, ~/.ssh/id_rsa in that order
  -l USER              remote user (default: from the target, else the local user)
  -p PORT              port (default 443)
  -url-path PATH       secret URL path (default /ssh3-term)
  -t                   force a pseudo-terminal
  -T                   disable the pseudo-terminal
  -o OPTION=VALUE      StrictHostKeyChecking=yes|accept-new|no|ask,
                       UserKnownHostsFile=FILE
  -insecure            do not verify the server's certificate
  -quic-backend NAME   aioquic (default) or qh3 (also $SSH3_QUIC_BACKEND)
  -v                   debug logging on stderr
  -version             print the version and exit
  -h, -help            this help

Exit status: the remote command's, 128+N if it was killed by signal N,
255 if the connection or authentication failed.
"""

DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")

_VALUE_FLAGS = {"-i": "identity", "-privkey": "identity", "-l": "user", "-p": "port",
                "-o": "option", "-url-path": "url_path", "-quic-backend": "backend"}
_BOOL_FLAGS = {"-t": "force_tty", "-T": "no_tty", "-insecure": "insecure", "-v": "verbose",
               "-version": "version", "-h": "help", "-help": "help", "--help": "help"}


class UsageError(Exception):
    pass


@dataclass
class Args:
    identities: list[str] = field(default_factory=list)
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
        if len(arg) > 2 and arg[:2] in ("-i", "-l", "-p", "-o") and not eq:
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


def _load_identities(args: Args) -> list:
    from ssh3.aio.client import private_key_identity
    from ssh3.auth.keys import KeyLoadError, PassphraseRequired, load_private_key

    explicit = bool(args.identities)
    paths = args.identities or list(DEFAULT_IDENTITIES)
    identities = []
    for raw in paths:
        path = os.path.expanduser(raw)
        if not explicit and not os.path.exists(path):
            continue
        try:
            key = load_private_key(path)
        except PassphraseRequired:
            try:
                passphrase = getpass.getpass(f"Enter passphrase for key '{path}': ")
            except (EOFError, OSError):
                print(f"ssh3: cannot ask for the passphrase of {path}; skipped",
                      file=sys.stderr)
                continue
            try:
                key = load_private_key(path, passphrase.encode())
            except KeyLoadError as exc:
                print(f"ssh3: {path}: {exc}; skipped", file=sys.stderr)
                continue
        except (KeyLoadError, OSError) as exc:
            print(f"ssh3: cannot use identity {path}: {exc}", file=sys.stderr)
            continue
        identities.append(private_key_identity(path, key))
    return identities


async def _run(args: Args, target: Target) -> int:
    from ssh3.aio.client import (
        ConnectParams,
        SSH3ClientError,
        establish,
        open_connection,
        wait_settings,
    )
    from ssh3.known_hosts import canonical_host, default_path

    from .hostkeys import HostKeyVerifier
    from .session import SessionRequest, run_session

    identities = _load_identities(args)
    known_hosts = os.path.expanduser(args.options.get("userknownhostsfile", "") or default_path())
    strict = args.options.get("stricthostkeychecking", "ask").lower()
    strict = {"off": "no", "false": "no", "true": "yes", "on": "yes"}.get(strict, strict)
    verifier = HostKeyVerifier(known_hosts, canonical_host(target.host, target.port, target.path),
                               strict)
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
            code = await run_session(conv, request)
            return code
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
