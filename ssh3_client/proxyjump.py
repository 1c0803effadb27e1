"""`-J`/`-proxy-jump` and `ProxyJump`/`UDPProxyJump`: reach the destination through
one or more jump hosts (PROTOCOL.md §3.9).

For a chain `A -> B -> C -> target` the client opens a conversation with B (direct
QUIC), then a QUIC connection to C carried in a direct-udp channel of B's
conversation, then the connection to the target in a channel of C's conversation.
Every hop is a complete SSH3 conversation with its own identities and its own
known_hosts entry (`host:port/path`); no session is opened on a jump host, and each
jump host relays only ciphertext (TLS runs end to end with the next host).

Packet sizes grow outward (ssh3/aio/jump.py): the innermost connection uses QUIC's
minimum of 1200 bytes, and a connection that carries others holds a 1280-byte packet
plus `HOP_OVERHEAD` bytes of framing per level it carries, so an inner packet always
fits one datagram. The library's `ssh3.connect(..., tunnel=)` does the same.
"""

from __future__ import annotations

import contextlib
import copy
import getpass
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:  # the QUIC stack is imported only to connect (ssh3 -G stays light)
    from ssh3.aio.client import ConnectParams
    from ssh3.aio.conversation import Conversation

log = logging.getLogger("ssh3.proxyjump")

DEFAULT_PATH = "/ssh3-term"
MAX_HOPS = 8  # each hop adds HOP_OVERHEAD bytes to the outermost packets


class JumpSpecError(ValueError):
    pass


@dataclass(frozen=True)
class HopSpec:
    """One `[user@]host[:port][/path]` of a jump list, as typed."""

    text: str
    alias: str
    user: str | None
    port: int | None
    path: str | None


@dataclass
class Hop:
    """A hop with the configuration of its alias applied."""

    spec: HopSpec
    host: str
    port: int
    path: str
    user: str
    args: Any  # a copy of the command line's Args for this hop (identities, options)

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}{self.path}"


def parse_jump_list(text: str) -> list[HopSpec]:
    """`-J B,C` / `ProxyJump B,C`: hops in the order they are traversed. `none`
    (alone) means no jump."""
    text = text.strip()
    if not text or text.lower() == "none":
        return []
    hops = [parse_hop(part.strip()) for part in text.split(",")]
    if len(hops) > MAX_HOPS:
        raise JumpSpecError(f"too many jump hosts ({len(hops)}; at most {MAX_HOPS})")
    return hops


def parse_hop(text: str) -> HopSpec:
    if not text:
        raise JumpSpecError("empty jump host in the list")
    url = urlsplit(text if "://" in text else "https://" + text)
    if url.scheme != "https" or not url.hostname:
        raise JumpSpecError(f"bad jump host {text!r}: expected [user@]host[:port][/path]")
    try:
        port = url.port
    except ValueError:
        raise JumpSpecError(f"bad port in jump host {text!r}") from None
    if port == 0:
        raise JumpSpecError(f"bad port in jump host {text!r}")
    user = unquote(url.username) if url.username else None
    return HopSpec(text, url.hostname, user, port, url.path or None)


def resolve_hop(spec: HopSpec, args: Any) -> Hop:
    """Apply `~/.ssh/config` (or -F) for the hop's alias: HostName, Port, User,
    URLPath and IdentityFile, as for a direct connection to that host. The
    command line's -i keys and -o options apply to every hop; -l, -p and
    -url-path name the destination only (as in OpenSSH)."""
    from .config import MULTI_VALUED, resolve

    cli_options, cli_identities = getattr(args, "command_line", None) or (
        dict(getattr(args, "options", {}) or {}), list(getattr(args, "identities", []) or []))
    resolved = resolve(spec.alias, config_file=getattr(args, "config_file", None),
                       options=cli_options, user=spec.user, port=spec.port)
    host = resolved.get("hostname") or spec.alias
    port = spec.port
    if port is None:
        try:
            port = int(resolved.get("port") or 443)
        except ValueError:
            raise JumpSpecError(f"bad Port {resolved.get('port')!r} for jump host "
                                f"{spec.alias}") from None
    if not 0 < port < 65536:
        raise JumpSpecError(f"bad port {port} for jump host {spec.alias}")
    path = spec.path or resolved.get("urlpath") or DEFAULT_PATH
    if not path.startswith("/"):
        path = "/" + path
    user = spec.user or resolved.get("user") or getpass.getuser()
    hop_args = copy.copy(args)
    # the hop's own options (IdentityAgent, IdentitiesOnly, BatchMode...), not the
    # destination's
    hop_args.options = {key: values[0] for key, values in resolved.options.items()
                        if key not in MULTI_VALUED and values}
    hop_args.identities = list(cli_identities)
    for identity in resolved.get_all("identityfile"):
        if identity not in hop_args.identities:
            hop_args.identities.append(identity)
    hop_args.target_host = host
    return Hop(spec, host, port, path, user, hop_args)


def connect_timeout(options: dict[str, str]) -> float | None:
    """OpenSSH's ConnectTimeout (seconds) for each QUIC handshake, hops included."""
    from .connect_timeout import ConnectTimeoutError
    from .connect_timeout import connect_timeout as parse

    try:
        return parse(options or {})
    except ConnectTimeoutError as exc:
        raise JumpSpecError(str(exc)) from None


def remember_command_line(args: Any) -> None:
    """Keep the command line's -o options and -i keys before the destination's
    configuration is merged into them: hops get these plus their own config."""
    args.command_line = (dict(args.options), list(args.identities))


def jump_list_of(args: Any) -> str | None:
    """The jump list: -J/-proxy-jump, else ProxyJump/UDPProxyJump of the destination."""
    value = getattr(args, "proxy_jump", None)
    if value is not None:
        return value
    options = getattr(args, "options", {}) or {}
    return options.get("proxyjump") or options.get("udpproxyjump")


async def open_chain(stack: contextlib.AsyncExitStack, args: Any, hops: list[Hop],
                     backend: str | None) -> tuple[Conversation, str]:
    """Open the conversations with every jump host, each through the previous one;
    returns the last one (which carries the destination) and its label. `stack`
    closes them, innermost first, after the destination's connection."""
    from ssh3.aio.client import ConnectParams, SSH3ClientError, establish, open_connection
    from ssh3.aio.jump import hop_backend as jump_backend
    from ssh3.aio.jump import hop_packet_size
    from ssh3.known_hosts import canonical_host

    from .hostkeys import HostKeyVerifier
    from .identities import load_identities

    via: Conversation | None = None
    via_label = ""
    for index, hop in enumerate(hops):
        carried = len(hops) - index  # connections this one carries (the target too)
        # qh3's first Initial is at most 1280 bytes: bigger hops go over aioquic
        hop_backend = jump_backend(backend, hop_packet_size(carried))
        # the hop's own UserKnownHostsFile/StrictHostKeyChecking (config, then -o)
        known_hosts, strict = _host_key_policy(hop.args)
        verifier = HostKeyVerifier(known_hosts, canonical_host(hop.host, hop.port, hop.path),
                                   strict, hostname=hop.host)
        try:
            identities = await load_identities(hop.args)
            params = ConnectParams(host=hop.host, port=hop.port, path=hop.path, user=hop.user,
                                   identities=identities, backend=hop_backend,
                                   insecure=getattr(args, "insecure", False),
                                   verify_certificate=verifier, via=via, via_label=via_label,
                                   connect_timeout=connect_timeout(hop.args.options),
                                   max_datagram_size=hop_packet_size(carried))
            protocol = await stack.enter_async_context(open_connection(params))
            conv = await establish(protocol, params)
        except SSH3ClientError as exc:
            # name the hop: "no answer from ..." alone would not say it was a jump host
            err = type(exc)(f"jump host {hop.spec.text}: {exc}")
            err.exit_code = exc.exit_code
            raise err from exc
        stack.callback(conv.close, "proxy jump done")
        log.debug("jump host %s: conversation %d (packets of %d bytes)", hop.label,
                  conv.control_stream_id, params.max_datagram_size)
        via, via_label = conv, hop.spec.text
    assert via is not None
    return via, via_label


def _host_key_policy(args: Any) -> tuple[str, str]:
    from ssh3.known_hosts import default_path

    options = getattr(args, "options", {}) or {}
    known_hosts = os.path.expanduser(options.get("userknownhostsfile", "") or default_path())
    strict = options.get("stricthostkeychecking", "ask").lower()
    strict = {"off": "no", "false": "no", "true": "yes", "on": "yes"}.get(strict, strict)
    return known_hosts, strict


def prepare(args: Any) -> list[Hop]:
    """The resolved hops for this run (empty without a jump); raises JumpSpecError."""
    text = jump_list_of(args)
    if text is None:
        return []
    return [resolve_hop(spec, args) for spec in parse_jump_list(text)]


async def chain_params(stack: contextlib.AsyncExitStack, args: Any, hops: list[Hop],
                       params: ConnectParams) -> ConnectParams:
    """`params` for the destination, carried through the jump hosts (opened now,
    closed by `stack`) when there are any."""
    if hops:
        params.via, params.via_label = await open_chain(stack, args, hops, params.backend)
    return params
