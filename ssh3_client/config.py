"""OpenSSH client configuration (``~/.ssh/config``, ``/etc/ssh/ssh_config``, ``-F``).

Semantics follow ssh_config(5) / OpenSSH's readconf.c for the part ssh3 uses:

* files are read in order (``-F FILE`` alone, else ``~/.ssh/config`` then
  ``/etc/ssh/ssh_config``), after the command line's ``-o`` options, and the
  **first value obtained wins**; ``IdentityFile``, ``CertificateFile``,
  ``LocalForward``, ``SendEnv`` accumulate instead;
* keywords are case-insensitive; ``Key value``, ``Key=value`` and ``"quoted
  values"`` are accepted; unknown keywords are ignored (ssh3 is not OpenSSH: a
  strict parser would refuse most real configs);
* ``Host`` takes whitespace-separated patterns with ``*``, ``?`` and ``!``
  negation (a negated match disqualifies the block); ``Match`` takes ``all``,
  ``host``, ``originalhost``, ``user``, ``localuser`` (comma-separated pattern
  lists, ``!`` before a criterion negates it); ``exec``, ``canonical``, ``final``
  and ``tagged`` are not supported: a block using them never applies (warning);
* ``Include`` takes globs, relative paths are under ``~/.ssh`` (user file) or
  ``/etc/ssh`` (system file), and is processed where it stands (inside a Host
  block only if the block applies);
* tokens ``%%``, ``%h`` (the HostName), ``%n`` (the alias), ``%p``, ``%r`` (remote
  user), ``%u`` (local user), ``%d`` (local home), ``%l`` (local host name), ``%i``
  (uid) and a leading ``~`` are expanded in IdentityFile, UserKnownHostsFile,
  IdentityAgent and CertificateFile; ``%h``/``%%`` in HostName.

Library or not (measured, Python 3.11): paramiko's ``SSHConfig`` supports Match
but silently treats ``Include`` as an ordinary option (so included files are
never read), and ``import paramiko`` costs 0.16 s; asyncssh's parser does
Include and Match but is internal API of a complete SSH implementation and
costs 0.21 s to import; ``sshconf`` is an editor that does not evaluate
Host/Match at all.  This module imports in 0.02 s and is ~250 lines, so it is
hand-written.
"""

from __future__ import annotations

import fnmatch
import getpass
import os
import shlex
from urllib.parse import unquote, urlsplit

from .records import field, record  # not dataclasses: start-up time (records.py)

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    from typing import Any


def _warn(fmt: str, *args: object) -> None:
    # logging is imported only when there is something to say (start-up time)
    import logging

    logging.getLogger("ssh3.config").warning(fmt, *args)

USER_CONFIG = "~/.ssh/config"
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
MAX_INCLUDE_DEPTH = 16  # readconf.c's READCONF_MAX_DEPTH
MULTI_VALUED = frozenset({"identityfile", "certificatefile", "localforward", "sendenv",
                          "remoteforward", "dynamicforward", "setenv"})
JOINED = frozenset({"localforward", "remoteforward", "sendenv", "setenv"})
# lists whose words are separate entries (quotes keep a value with spaces whole)
TOKEN_LISTS = frozenset({"sendenv", "setenv"})
PATH_OPTIONS = frozenset({"identityfile", "userknownhostsfile", "identityagent",
                          "certificatefile", "controlpath"})


class ConfigError(Exception):
    pass


def match_pattern(name: str, pattern: str) -> bool:
    """OpenSSH's match_pattern: `*` and `?` only, case-insensitive for host names."""
    # fnmatch would also treat [..] as a class; OpenSSH does not
    escaped = pattern.replace("[", "[[]")
    return fnmatch.fnmatchcase(name.lower(), escaped.lower())


def match_pattern_list(name: str, patterns: list[str]) -> bool:
    """True if a positive pattern matches and no negated one does (match_pattern_list)."""
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if match_pattern(name, pattern[1:] if negated else pattern):
            if negated:
                return False
            matched = True
    return matched


def split_line(line: str) -> tuple[str, list[str]] | None:
    """`Keyword value...` / `Keyword=value...` → (lower-cased keyword, arguments)."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    key_end = 0
    while key_end < len(line) and not line[key_end].isspace() and line[key_end] != "=":
        key_end += 1
    key, rest = line[:key_end], line[key_end:].lstrip()
    if rest.startswith("="):
        rest = rest[1:].lstrip()
    try:
        lexer = shlex.shlex(rest, posix=True)
        lexer.whitespace_split = True
        lexer.commenters = ""  # a '#' inside a value is part of it
        values = list(lexer)
    except ValueError as exc:
        raise ConfigError(f"bad quoting: {line!r}") from exc
    return key.lower(), values


@record
class Resolved:
    """The options for one destination: lower-cased keyword → values in order of
    precedence (first value wins for single-valued options)."""

    options: dict[str, list[str]] = field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        values = self.options.get(key.lower())
        return values[0] if values else default

    def get_all(self, key: str) -> list[str]:
        return list(self.options.get(key.lower(), []))

    def add(self, key: str, value: str) -> None:
        if key in MULTI_VALUED:
            self.options.setdefault(key, []).append(value)
        elif key not in self.options:
            self.options[key] = [value]


class _Reader:
    def __init__(self, host: str, resolved: Resolved, local_user: str, home: str) -> None:
        self.original_host = host
        self.resolved = resolved
        self.local_user = local_user
        self.home = home

    def read_file(self, path: str, base_dir: str, depth: int = 0) -> None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return
        except OSError as exc:
            _warn("cannot read %s: %s", path, exc)
            return
        active = True  # options before the first Host/Match apply to every host
        for lineno, line in enumerate(lines, 1):
            try:
                parsed = split_line(line)
            except ConfigError as exc:
                raise ConfigError(f"{path} line {lineno}: {exc}") from None
            if parsed is None:
                continue
            key, values = parsed
            if key == "host":
                active = match_pattern_list(self.original_host, values)
            elif key == "match":
                active = self._match(values, path, lineno)
            elif not active:
                continue
            elif key == "include":
                self._include(values, base_dir, depth, path, lineno)
            elif values and key in TOKEN_LISTS:
                for value in values:  # SetEnv FOO="a b" BAR=c: one entry per word
                    self.resolved.add(key, value)
            elif values:
                # forwards take several words; the rest one value
                value = " ".join(values) if key in JOINED else values[0]
                self.resolved.add(key, value)

    def _include(self, values: list[str], base_dir: str, depth: int, path: str,
                 lineno: int) -> None:
        if depth >= MAX_INCLUDE_DEPTH:
            raise ConfigError(f"{path} line {lineno}: Include nested too deeply")
        for value in values:
            pattern = os.path.expanduser(value) if value.startswith("~") else value
            if not os.path.isabs(pattern):
                pattern = os.path.join(base_dir, pattern)
            import glob  # only configs with Include need it

            for included in sorted(glob.glob(pattern)):
                self.read_file(included, base_dir, depth + 1)

    def _match(self, values: list[str], path: str, lineno: int) -> bool:
        result = True
        i = 0
        while i < len(values):
            criterion = values[i].lower()
            negate = criterion.startswith("!")
            criterion = criterion.lstrip("!")
            if criterion == "all":
                ok = True
                i += 1
            elif criterion in ("host", "originalhost", "user", "localuser"):
                if i + 1 >= len(values):
                    raise ConfigError(f"{path} line {lineno}: Match {criterion} needs patterns")
                patterns = values[i + 1].split(",")
                i += 2
                if criterion == "host":
                    subject = self.resolved.get("hostname") or self.original_host
                    subject = expand_hostname(subject, self.original_host)
                elif criterion == "originalhost":
                    subject = self.original_host
                elif criterion == "user":
                    subject = self.resolved.get("user") or self.local_user
                else:
                    subject = self.local_user
                ok = match_pattern_list(subject, patterns)
            else:
                _warn("%s line %d: Match %s is not supported: the block is ignored",
                            path, lineno, criterion)
                return False
            if negate:
                ok = not ok
            result = result and ok
        return result


def expand_hostname(value: str, host: str) -> str:
    """HostName accepts only %h and %%."""
    return expand_tokens(value, {"h": host})


def expand_tokens(value: str, tokens: dict[str, str]) -> str:
    out = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "%" and i + 1 < len(value):
            token = value[i + 1]
            if token == "%":
                out.append("%")
            elif token in tokens:
                out.append(tokens[token])
            else:
                raise ConfigError(f"unknown token %{token} in {value!r}")
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def config_files(config_file: str | None, home: str) -> list[tuple[str, str]]:
    """(file, base directory for relative Includes) in reading order; `-F none`
    reads nothing."""
    if config_file is not None:
        if config_file == "none":
            return []
        return [(os.path.expanduser(config_file), os.path.join(home, ".ssh"))]
    return [(os.path.join(home, ".ssh", "config"), os.path.join(home, ".ssh")),
            (SYSTEM_CONFIG, os.path.dirname(SYSTEM_CONFIG))]


def resolve(host: str, *, config_file: str | None = None,
            options: dict[str, str] | None = None, user: str | None = None,
            port: int | None = None, home: str | None = None,
            local_user: str | None = None) -> Resolved:
    """The options for `host` (the alias typed by the user). `options` are the
    command line's `-o` (lower-cased keys), `user`/`port` the -l/-p flags or URL
    parts: they take precedence over every file."""
    home = home if home is not None else os.path.expanduser("~")
    local_user = local_user or getpass.getuser()
    resolved = Resolved()
    for key, value in (options or {}).items():
        if key in TOKEN_LISTS:
            try:
                words = shlex.split(value)
            except ValueError as exc:
                raise ConfigError(f"bad quoting in -o {key}: {value!r}") from exc
            for word in words:
                resolved.add(key, word)
        else:
            resolved.add(key, value)
    if user is not None:
        resolved.options["user"] = [user]
    if port is not None:
        resolved.options["port"] = [str(port)]
    reader = _Reader(host, resolved, local_user, home)
    for path, base in config_files(config_file, home):
        if config_file is not None and not os.path.exists(path):
            raise ConfigError(f"cannot read config file {path}")
        reader.read_file(path, base)
    _expand_paths(resolved, host, home, local_user)
    return resolved


def _expand_paths(resolved: Resolved, host: str, home: str, local_user: str) -> None:
    hostname = expand_hostname(resolved.get("hostname") or host, host)
    if "hostname" in resolved.options:
        resolved.options["hostname"] = [hostname]
    local_host = os.uname().nodename  # = socket.gethostname(), without importing socket
    tokens = {"h": hostname, "n": host, "p": resolved.get("port") or "443",
              "r": resolved.get("user") or local_user, "u": local_user, "d": home,
              "l": local_host.split(".")[0], "L": local_host.split(".")[0],
              "i": str(os.getuid())}
    if any("%C" in v for vs in resolved.options.values() for v in vs):
        import hashlib  # start-up matters for multiplexed runs: only when used

        # %C: OpenSSH's hash of %l%h%p%r (a short, unique ControlPath name)
        tokens["C"] = hashlib.sha1((tokens["l"] + hostname + tokens["p"] + tokens["r"])
                                   .encode()).hexdigest()
    for key in PATH_OPTIONS & resolved.options.keys():
        expanded = []
        for value in resolved.options[key]:
            if key == "identityagent" and value.lower() == "none":
                expanded.append(value)
                continue
            value = expand_tokens(value, tokens)
            if value == "~" or value.startswith("~/"):
                value = home + value[1:]
            expanded.append(value)
        resolved.options[key] = expanded


def local_forward_spec(value: str) -> str:
    """`LocalForward [BIND:]PORT HOST:HOSTPORT` → the -L form `[BIND:]PORT:HOST:HOSTPORT`."""
    parts = value.split()
    if len(parts) != 2:
        raise ConfigError(f"bad LocalForward {value!r}: expected [bind:]port host:hostport")
    return f"{parts[0]}:{parts[1]}"


def _yes(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "true", "on", "1")


def apply_to_args(args: Any) -> Resolved:
    """Fill what the command line left open in `args` (ssh3_client.cli.Args) from
    the configuration of the destination's alias. Precedence: URL parts >
    command-line flags and -o > config files."""
    text = args.target or ""
    url = urlsplit(text if "://" in text else "https://" + text)
    alias = url.hostname or text  # parse_target reports malformed destinations
    url_user = unquote(url.username) if url.username else None
    try:
        url_port = url.port
    except ValueError:
        url_port = None
    resolved = resolve(alias, config_file=args.config_file, options=args.options,
                       user=url_user or args.user, port=url_port or args.port)
    args.hostname = resolved.get("hostname") if "hostname" in resolved.options else None
    if args.user is None:
        args.user = resolved.get("user")
    if args.port is None and resolved.get("port"):
        try:
            port = int(resolved.get("port") or "")
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise ConfigError(f"bad Port {resolved.get('port')!r}")
        args.port = port
    if args.url_path is None:
        args.url_path = resolved.get("urlpath")
    for path in resolved.get_all("identityfile"):
        if path not in args.identities:
            args.identities.append(path)
    for key, values in resolved.options.items():
        if key not in MULTI_VALUED:
            args.options[key] = values[0]
    if _yes(resolved.get("clearallforwardings")):
        args.forwards.clear()  # like OpenSSH, also those of the command line (scp sets it)
        args.remote_forwards.clear()
    elif resolved.get_all("localforward") or resolved.get_all("remoteforward"):
        from .forwarding import ForwardError, parse_local_forward
        from .reverse_forwarding import parse_config_remote_forward

        for value in resolved.get_all("remoteforward"):
            try:
                args.remote_forwards.append(parse_config_remote_forward(value))
            except ForwardError as exc:
                raise ConfigError(f"RemoteForward {value!r}: {exc}") from None

        for value in resolved.get_all("localforward"):
            try:
                args.forwards.append(parse_local_forward(local_forward_spec(value)))
            except ForwardError as exc:
                raise ConfigError(f"LocalForward {value!r}: {exc}") from None
    if not args.forward_agent and _yes(resolved.get("forwardagent")):
        args.forward_agent = True  # -A from the config (a socket path is not supported)
    if resolved.get_all("dynamicforward") and not _yes(resolved.get("clearallforwardings")):
        from .forwarding import ForwardError
        from .socks import parse_dynamic_forward

        for value in resolved.get_all("dynamicforward"):
            try:
                args.dynamic.append(parse_dynamic_forward(value))
            except ForwardError as exc:
                raise ConfigError(f"DynamicForward {value!r}: {exc}") from None
    if not args.force_tty and not args.no_tty:
        request_tty = (resolved.get("requesttty") or "auto").lower()
        if request_tty == "no":
            args.no_tty = True
        elif request_tty == "force" or (request_tty == "yes" and os.isatty(0)):
            args.force_tty = True
    if not args.verbose and not args.quiet:
        level = (resolved.get("loglevel") or "").lower()
        args.quiet = level == "quiet"
        args.verbose = level.startswith("debug")
    if args.escape_char is None:
        args.escape_char = resolved.get("escapechar")
    # SendEnv patterns and SetEnv NAME=VALUE words (ssh3_client/environment.py)
    args.send_env = resolved.get_all("sendenv")
    args.set_env = resolved.get_all("setenv")
    # ProxyJump/UDPProxyJump are read by ssh3_client/proxyjump.py from args.options
    value = resolved.get("proxycommand")
    if value and value.lower() != "none":
        args.warnings.append("proxycommand is not supported by ssh3: connecting directly")
    return resolved


def dump(resolved: Resolved, args: Any, host: str) -> str:
    """`ssh -G`: the resolved configuration, one `keyword value` per line."""
    lines = [f"host {host}", f"hostname {args.hostname or host}",
             f"user {args.user or getpass.getuser()}", f"port {args.port or 443}",
             f"urlpath {args.url_path or '/ssh3-term'}"]
    lines += [f"identityfile {p}" for p in args.identities]
    for key, values in sorted(resolved.options.items()):
        if key not in ("hostname", "user", "port", "urlpath", "identityfile"):
            lines += [f"{key} {v}" for v in values]
    return "\n".join(lines) + "\n"
