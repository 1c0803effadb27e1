"""`ssh3 [flags] [user@]host[:port][/path] [command ...]`"""

from __future__ import annotations

# imports cost start-up time on every run: what only some runs need (asyncio and
# the QUIC stack, forwarding, SOCKS, -W) is imported where it is used
import getpass
import os
import sys
from urllib.parse import parse_qs, unquote, urlsplit

from .records import field, record  # not dataclasses: start-up time (records.py)

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
  -use-oidc ISSUER     log in with an OpenID Connect ID token from ISSUER (a browser
                       login, or the device flow without a browser); see docs/oidc.md
  -oidc-config FILE    OIDC clients, a JSON array of {issuer_url, client_id,
                       client_secret} (default ~/.ssh3/oidc_config.json)
  -no-pkce             no PKCE in the OIDC code flow (-do-pkce, the default, is accepted)
  -oidc-device         use the OIDC device flow (print a code to enter elsewhere)
  -l USER              remote user (default: from the target, else the local user)
  -p PORT              port (default 443)
  -url-path PATH       secret URL path (default /ssh3-term)
  -t                   force a pseudo-terminal
  -T                   disable the pseudo-terminal
  -o OPTION=VALUE      StrictHostKeyChecking=yes|accept-new|no|ask,
                       UserKnownHostsFile=FILE, IdentitiesOnly=yes (no agent keys
                       but those of the key files), IdentityAgent=SOCKET|none,
                       BatchMode=yes, NumberOfPasswordPrompts=N,
                       ServerAliveInterval=SECONDS, ServerAliveCountMax=N (default 3),
                       SendEnv=PATTERNS, SetEnv=NAME=VALUE (sent to ssh3-py servers),
                       ControlMaster=yes|no|auto, ControlPath=PATH, ControlPersist=
                       yes|no|TIME (connection multiplexing: docs/multiplexing.md),
                       ConnectTimeout=SECONDS (default 15; none: no limit),
                       BindAddress=ADDR
  -b ADDR              send from this local address (BindAddress)
  -M                   be a multiplexing master (ControlMaster=yes)
  -S PATH              control socket (ControlPath)
  -O check|exit|stop   ask the multiplexing master at the ControlPath
  -L [BIND:]PORT:HOST:HOSTPORT  forward local TCP port PORT to HOST:HOSTPORT through
                       the server (OpenSSH syntax; HOST is resolved here); repeatable
  -forward-tcp LPORT/IP@PORT  the same, reference syntax (listens on 127.0.0.1)
  -forward-udp LPORT/IP@PORT  forward local UDP port LPORT to IP:PORT; repeatable
  -R [BIND:]PORT:HOST:HOSTPORT  remote forwarding: the server listens on PORT
                       (loopback unless BIND is given and the server allows it; 0 picks
                       a port, printed as "Allocated port N ...") and each connection
                       is relayed to HOST:HOSTPORT from here; ssh3-py servers only;
                       repeatable (-o ExitOnForwardFailure=yes: exit if refused)
  -D [BIND:]PORT       dynamic forwarding: a SOCKS4/4a/5 server on PORT (127.0.0.1
                       unless BIND is given); names are resolved on the server when
                       it supports that (ssh3-py servers), else here; repeatable
  -A, -forward-agent   forward the local agent ($SSH_AUTH_SOCK, or -o IdentityAgent)
                       to the session: SSH_AUTH_SOCK is set on the server
  -N                   no command or shell: only forward, until interrupted
  -e CHAR              escape character for ~. ~C ~? ... (default ~; ^X for a
                       control character; none disables); also EscapeChar
  -J, -proxy-jump [USER@]HOST[:PORT][/PATH][,...]  reach the destination through
                       these jump hosts in turn (QUIC carried end to end in a UDP
                       channel of each); also ProxyJump/UDPProxyJump in the config
  -W HOST:PORT         stdio forwarding: no session; stdin/stdout are relayed to a TCP
                       connection to HOST:PORT made by the server (a ProxyCommand:
                       ssh -o ProxyCommand='ssh3 -W %h:%p jump/path' target)
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
                "-forward-udp": "forward_udp", "-D": "dynamic", "-W": "stdio_forward",
                "-use-oidc": "use_oidc", "-oidc-config": "oidc_config",
                "-R": "remote_forward",
                "-J": "proxy_jump", "-proxy-jump": "proxy_jump"}
_BOOL_FLAGS = {"-t": "force_tty", "-T": "no_tty", "-insecure": "insecure", "-v": "verbose",
               "-version": "version", "-h": "help", "-help": "help", "--help": "help",
               "-N": "no_command", "-use-password": "use_password",
               "-A": "forward_agent", "-forward-agent": "forward_agent",
               "-no-pkce": "no_pkce", "-do-pkce": "do_pkce", "-oidc-device": "oidc_device",
               # OpenSSH's, which sftp/scp/rsync/git pass (getopt style, bundled too)
               "-n": "null_stdin", "-q": "quiet", "-s": "subsystem", "-G": "print_config",
               "-V": "version"}
_VALUE_FLAGS.update({"-F": "config_file", "-e": "escape_char",
                     "-O": "mux_command", "-S": "control_path"})
_BOOL_FLAGS["-M"] = "master"
# OpenSSH flags that change nothing for ssh3: QUIC/TLS chooses ciphers and MACs,
# there is no X11 forwarding to turn off (-x, -a), compression is not negotiated
_IGNORED_BOOL = {"-x", "-a", "-C", "-4", "-6", "-k", "-K", "-g", "-y", "-1", "-2"}
_IGNORED_VALUE = {"-c", "-m", "-E", "-B"}
_WARN_BOOL = {"-X": "X11 forwarding is not supported: -X ignored",
              "-Y": "X11 forwarding is not supported: -Y ignored"}
_WARN_VALUE: dict[str, str] = {}
_VALUE_FLAGS["-b"] = "bind_address"  # or BindAddress
_UNSUPPORTED = {"-w": "tunnel devices (-w)",
                "-Q": "queries (-Q)", "-f": "going to the background (-f)",
                "-I": "PKCS#11 (-I)",
                "-P": "-P tag"}
_UNSUPPORTED_TAKES_VALUE = {"-w", "-Q", "-I", "-P"}


class UsageError(Exception):
    pass


@record
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
    use_oidc: str | None = None  # -use-oidc ISSUER (ssh3_client/oidc.py)
    oidc_config: str | None = None
    no_pkce: bool = False
    do_pkce: bool = False  # v0.1.7's flag; PKCE is on by default anyway
    oidc_device: bool = False
    target_host: str = ""
    forward_agent: bool = False
    dynamic: list = field(default_factory=list)  # ssh3_client.socks.SocksSpec (-D)
    # ssh3_client.reverse_forwarding.RemoteForwardSpec (-R, RemoteForward)
    remote_forwards: list = field(default_factory=list)
    config_file: str | None = None  # -F
    hostname: str | None = None  # HostName from the config: the alias's real name
    null_stdin: bool = False  # -n
    quiet: bool = False  # -q
    subsystem: bool = False  # -s: the command is a subsystem name
    print_config: bool = False  # -G
    stdio_forward: object = None  # -W: ssh3_client.stdio_forward.StdioTarget
    escape_char: str | None = None  # -e / EscapeChar: ~ by default, ^X, or none
    proxy_jump: str | None = None  # -J / -proxy-jump: [user@]host[:port][/path],...
    command_line: tuple | None = None  # (-o options, -i keys) before the config
    bind_address: str | None = None  # -b; else BindAddress
    warnings: list[str] = field(default_factory=list)
    send_env: list[str] = field(default_factory=list)  # SendEnv patterns (config, -o)
    set_env: list[str] = field(default_factory=list)  # SetEnv NAME=VALUE (config, -o)
    master: int = 0  # -M count (ControlMaster=yes; -MM is ask, treated as auto)
    mux_command: str | None = None  # -O check|exit|stop
    mux: object = None  # ssh3_client.mux_client.Plan when this run is the master
    mux_ready_fd: int | None = None  # background master: tell the foreground when ready


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
            _set_flag(args, _BOOL_FLAGS[name])
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
        # OpenSSH getopt style: bundled letters (-nT, -vvv) and attached values
        # (-p2222, -oUser=x, "-oForwardX11 no"), or the value in the next argument
        i = _parse_bundle(args, argv, i)
    rest = argv[i:]
    if rest:
        args.target = rest[0]
        args.command = rest[1:]
    return args


def _parse_bundle(args: Args, argv: list[str], i: int) -> int:
    """One getopt-style argument at argv[i]; returns the index of the next one."""
    arg = argv[i]
    pos = 1
    while pos < len(arg):
        flag = "-" + arg[pos]
        pos += 1
        takes_value = flag in _VALUE_FLAGS or flag in _IGNORED_VALUE or flag in _WARN_VALUE \
            or flag in _UNSUPPORTED_TAKES_VALUE
        value = ""
        if takes_value:
            if pos < len(arg):
                value = arg[pos:]
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise UsageError(f"flag {flag} needs a value")
            pos = len(arg)
        # a flag implemented since (in _BOOL_FLAGS/_VALUE_FLAGS) wins over _UNSUPPORTED
        if flag in _UNSUPPORTED and flag not in _BOOL_FLAGS and flag not in _VALUE_FLAGS:
            raise UsageError(f"{_UNSUPPORTED[flag]} is not supported by ssh3")
        if flag in _BOOL_FLAGS:
            _set_flag(args, _BOOL_FLAGS[flag])
        elif flag in _VALUE_FLAGS:
            _set_value(args, _VALUE_FLAGS[flag], value)
        elif flag in _WARN_BOOL:
            args.warnings.append(_WARN_BOOL[flag])
        elif flag in _WARN_VALUE:
            args.warnings.append(_WARN_VALUE[flag])
        elif flag not in _IGNORED_BOOL and flag not in _IGNORED_VALUE:
            raise UsageError(f"unknown flag {flag}" + (f" in {arg}" if len(arg) > 2 else ""))
    return i + 1


def _set_flag(args: Args, key: str) -> None:
    # -M counts (-MM: ControlMaster ask); the other flags are plain booleans
    setattr(args, key, args.master + 1 if key == "master" else True)


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
    elif key == "remote_forward":
        from .forwarding import ForwardError
        from .reverse_forwarding import parse_remote_forward

        try:
            args.remote_forwards.append(parse_remote_forward(value))
        except ForwardError as exc:
            raise UsageError(str(exc)) from None
    elif key == "dynamic":
        from .forwarding import ForwardError
        from .socks import parse_dynamic_forward

        try:
            args.dynamic.append(parse_dynamic_forward(value))
        except ForwardError as exc:
            raise UsageError(str(exc)) from None
    elif key == "stdio_forward":
        from .forwarding import ForwardError
        from .stdio_forward import parse_stdio_target

        try:
            args.stdio_forward = parse_stdio_target(value)
        except ForwardError as exc:
            raise UsageError(str(exc)) from None
    elif key == "control_path":  # -S: ControlPath, before the config's
        args.options.setdefault("controlpath", value)
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


@record
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
    # the config's HostName replaces the alias (and names it in known_hosts)
    host = getattr(args, "hostname", None) or url.hostname
    return Target(host, url_port or args.port or 443, path, user)


async def _run(args: Args, target: Target) -> int:
    import contextlib

    from ssh3.aio.client import (
        ConnectParams,
        SSH3ClientError,
        establish,
        open_connection,
        wait_settings,
    )
    from ssh3.aio.conversation import Conversation
    from ssh3.known_hosts import canonical_host, default_path

    from . import proxyjump
    from .agent_forwarding import AgentChannels, agent_socket
    from .early_session import EarlySession, plain_session
    from .escape import parse_escape_char
    from .forwarding import ForwardError
    from .hostkeys import HostKeyVerifier
    from .identities import load_identities
    from .keepalive import KeepaliveError, run_with_keepalive
    from .keepalive import settings as keepalive_settings
    from .mux_master import MuxRole
    from .reverse_forwarding import RemoteForwarding
    from .session import SessionRequest, run_session

    args.target_host = target.host
    identities = await load_identities(args)
    known_hosts = os.path.expanduser(args.options.get("userknownhostsfile", "") or default_path())
    strict = args.options.get("stricthostkeychecking", "ask").lower()
    strict = {"off": "no", "false": "no", "true": "yes", "on": "yes"}.get(strict, strict)
    verifier = HostKeyVerifier(known_hosts, canonical_host(target.host, target.port, target.path),
                               strict, hostname=target.host)
    from .connect_timeout import ConnectTimeoutError, connect_timeout

    try:
        timeout = connect_timeout(args.options)
    except ConnectTimeoutError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return 255
    params = ConnectParams(host=target.host, port=target.port, path=target.path,
                           user=target.user, identities=identities, backend=args.backend,
                           insecure=args.insecure, verify_certificate=verifier,
                           connect_timeout=timeout,
                           bind_address=args.bind_address or args.options.get("bindaddress"))
    from .session_args import session_basics

    basics = session_basics(args)
    if isinstance(basics, int):
        return basics
    command, want_pty, env = basics
    request = SessionRequest(command=command, pty=want_pty, term=os.environ.get("TERM", ""),
                             forward_agent=args.forward_agent, subsystem=args.subsystem,
                             escape_char=parse_escape_char(args.escape_char),
                             host=target.host, quiet=args.quiet, env=env)
    try:
        keepalive_settings(args.options)  # bad values fail before connecting
    except KeepaliveError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return 255
    # -n: stdin from /dev/null (OpenSSH's; also what `ssh -n` in scripts relies on)
    stdin_fd = os.open(os.devnull, os.O_RDONLY) if args.null_stdin else 0
    try:
        hops = proxyjump.prepare(args)
    except proxyjump.JumpSpecError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return 255
    mux = MuxRole(args, params)  # ControlMaster: this run serves later ones
    try:
        async with contextlib.AsyncExitStack() as jumps, \
                open_connection(await proxyjump.chain_params(jumps, args, hops, params)) \
                as protocol, mux:
            # server-opened channels: agent connections with -A, reset otherwise
            def agent_channels(conv: Conversation) -> None:
                AgentChannels(conv, args.forward_agent, agent_socket(args.options))

            # not in a background master (ControlPersist), which runs no session itself
            early = EarlySession(request, stdin_fd, agent_channels) if plain_session(
                args.no_command, args.stdio_forward, [*args.forwards, *args.remote_forwards],
                args.dynamic) and mux.ready_fd is None else None
            conv = await establish(protocol, mux.params,
                                   early=early.open if early else None)
            if early is None or not early.used_on(conv):
                agent_channels(conv)
            await wait_settings(protocol)
            if await mux.start(protocol, conv, agent_socket(args.options)):
                # a background master (ControlPersist): serve until idle or -O exit
                return await run_with_keepalive(protocol, mux.serve(), args.options,
                                                target.host)

            async def work() -> int:
                channel = early.channel_for(conv) if early is not None else None
                if channel is not None and not (request.pty and os.isatty(stdin_fd)):
                    # no listeners, and no ~C to add any (escapes need a terminal)
                    return await run_session(conv, request, stdin_fd=stdin_fd, channel=channel)
                from .forwarding import Forwarding, forward_until_stopped
                from .socks import DynamicForwarding

                if args.stdio_forward is not None:
                    from .stdio_forward import stdio_forward

                    # OpenSSH's -W implies ClearAllForwardings: no -L/-D listeners
                    return await stdio_forward(conv, args.stdio_forward, stdin_fd=stdin_fd)
                # listeners are up before the session starts, and close when it ends
                exit_on_failure = args.options.get("exitonforwardfailure", "").lower() \
                    in ("yes", "true", "on")
                async with Forwarding(conv, args.forwards) as forwarding, \
                        DynamicForwarding(conv, args.dynamic) as dynamic, \
                        RemoteForwarding(conv, args.remote_forwards,
                                         exit_on_failure=exit_on_failure):
                    if args.no_command:
                        return await forward_until_stopped(conv)
                    return await run_session(conv, request, stdin_fd=stdin_fd,
                                             forwarding=forwarding, dynamic=dynamic,
                                             channel=channel)

            # PINGs: ServerAliveInterval/CountMax, else a plain keep-alive (idle timeout)
            return await run_with_keepalive(protocol, mux.after(work()), args.options,
                                            target.host)
    except ForwardError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return 255
    except SSH3ClientError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return exc.exit_code


async def _run_until_hangup(args: Args, target: Target) -> int:
    """SIGHUP (the terminal went away) or SIGTERM end the run through the normal
    cleanup, so the server hears CONNECTION_CLOSE at once and hangs up the session
    instead of waiting for its idle timeout; exit 255 as OpenSSH does."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    caught: list[int] = []

    def on_signal(signum: int) -> None:
        caught.append(signum)
        if task is not None:
            task.cancel()

    for signum in (signal.SIGHUP, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await _run(args, target)
    except asyncio.CancelledError:
        if caught:
            return 255
        raise


def _bad_escape(args: Args) -> bool:
    from .escape import parse_escape_char

    try:
        parse_escape_char(args.escape_char)  # -e or EscapeChar
    except ValueError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # the `ssh3` program, not a caller in the same process
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
    if args.stdio_forward is not None and args.command:
        print("ssh3: -W runs no command: give either -W or a command", file=sys.stderr)
        return 255
    from .config import ConfigError, apply_to_args, dump
    from .proxyjump import remember_command_line

    remember_command_line(args)
    try:
        resolved = apply_to_args(args)
    except ConfigError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return 255
    if args.print_config:  # ssh -G (git probes with it to pick its OpenSSH variant)
        if _bad_escape(args):
            return 255
        print(dump(resolved, args, args.hostname or args.target), end="")
        return 0
    if not args.quiet:
        for warning in args.warnings:
            print(f"ssh3: {warning}", file=sys.stderr)
    try:
        target = parse_target(args.target, args)
    except UsageError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return 255
    # multiplexing first, before asyncio, logging and QUIC are imported (mux_cli.py)
    from .mux_cli import before_connect, fast_exit

    mux_code = before_connect(args, target.host)
    if mux_code is not None:
        if own_process:
            fast_exit(mux_code)
        return mux_code
    import logging

    logging.basicConfig(level=logging.DEBUG if args.verbose
                        else logging.ERROR if args.quiet else logging.WARNING,
                        format="ssh3: %(name)s: %(message)s")
    if _bad_escape(args):
        return 255
    import asyncio
    from contextlib import suppress

    try:
        code = asyncio.run(_run_until_hangup(args, target))
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # our stdout went away (`ssh3 host cmd | head`): stop quietly
        with suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        return 255
    with suppress(OSError):
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
