"""The library API, in the shape asyncssh users know:

    async with ssh3.connect("alice@host:4433/secret") as conn:
        result = await conn.run("uname -a", check=True)
        print(result.stdout, end="")

Host certificates are checked against ~/.ssh3/known_hosts (exact pin); nothing
prompts: an unknown server is refused unless `accept_new=True` (or `insecure=True`).
See docs/library.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import socket
import weakref
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ._awaitable import AwaitableContext
from .aio.client import (
    ConnectParams,
    HostKeyError,
    Identity,
    SSH3ClientError,
    establish,
    open_connection,
    private_key_identity,
    wait_settings,
)
from .aio.conversation import Conversation
from .aio.jump import hop_backend as jump_backend
from .aio.jump import hop_packet_size
from .auth.keys import load_private_key
from .client_process import (
    ChannelOpenError,
    CompletedProcess,
    ProcessError,
    SSH3ClientProcess,
    Target,
)
from .forward import (
    ForwardSpec,
    TcpForwarder,
    UdpForwarder,
    _finish,
    _TcpRelay,
    resolve,
)
from .known_hosts import KnownHosts, canonical_host, default_path, mismatch_message
from .messages import (
    ChannelOpenConfirmation,
    ChannelOpenFailure,
    ExecRequest,
    PtyRequest,
    ShellRequest,
    SubsystemRequest,
)

__all__ = ["connect", "Connection", "Listener", "CompletedProcess", "ProcessError",
           "ChannelOpenError", "SSH3ClientProcess"]

log = logging.getLogger("ssh3.client")

DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
KEEPALIVE_INTERVAL = 10.0  # the QUIC idle timeout is 30 s


class Listener:
    """A local TCP or UDP port forwarded through the connection (asyncssh's
    SSHListener): `get_port()`, `close()`, `await wait_closed()`, `async with`."""

    def __init__(self, forwarder: TcpForwarder | UdpForwarder) -> None:
        self._forwarder = forwarder
        self._closing: asyncio.Future[None] | None = None

    def get_port(self) -> int:
        return self._forwarder.get_port()

    def close(self) -> None:
        """Stop listening and end the connections/flows being forwarded."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._forwarder.close())

    async def wait_closed(self) -> None:
        self.close()
        assert self._closing is not None
        await self._closing

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.wait_closed()


class Connection:
    """One authenticated conversation; each process is a session channel of it,
    each forwarded connection a direct-tcp channel, each UDP flow a direct-udp one."""

    def __init__(self, protocol: Any, conversation: Conversation,
                 stack: contextlib.AsyncExitStack, keepalive_interval: float) -> None:
        self._protocol = protocol
        self.conversation = conversation
        self._stack = stack  # holds the QUIC connection open
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._processes: weakref.WeakSet[SSH3ClientProcess] = weakref.WeakSet()
        self._keepalive = asyncio.ensure_future(_keep_alive(protocol, keepalive_interval))
        self._closing: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def close(self) -> None:
        """End processes, listeners and forwarded connections, then the connection."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())

    async def wait_closed(self) -> None:
        """Until close() has finished, or the server ended the connection."""
        if self._closing is None:
            waiters = {asyncio.ensure_future(self._protocol.terminated.wait()),
                       asyncio.ensure_future(self.conversation.ended.wait())}
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            self.close()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    # ------------------------------------------------------------ processes

    def create_process(self, command: str | None = None, *,
                       subsystem: str | None = None, term_type: str | None = None,
                       term_size: tuple[int, int] | None = None,
                       env: dict[str, str] | None = None,
                       encoding: str | None = "utf-8", errors: str = "strict",
                       stdin: bytes | str | Any = None, stdout: Target = None,
                       stderr: Target = None) -> AwaitableContext[SSH3ClientProcess]:
        """Start `command` (`<login shell> -c command` on the server), a login shell
        when None, or a subsystem. `term_type` asks for a pty of `term_size`
        (columns, rows; default 80x24). `encoding=None` gives bytes. `stdin` may be
        bytes/str (sent, then EOF) or a binary file; `stdout`/`stderr` may be files
        that receive the output instead of the process's streams."""

        async def start() -> SSH3ClientProcess:
            channel = self.conversation.open_channel("session")
            try:
                for request in _env_requests(self.conversation, env or {}):
                    channel.send(request)
                if term_type is not None:
                    columns, rows = term_size or (80, 24)
                    channel.send(PtyRequest(term_type, columns, rows, 0, 0, b"",
                                            want_reply=True))
                if subsystem is not None:
                    channel.send(SubsystemRequest(subsystem, want_reply=True))
                elif command is None:
                    channel.send(ShellRequest(want_reply=True))
                else:
                    channel.send(ExecRequest(command.encode(), want_reply=True))
            except BaseException:
                _finish(channel)
                raise
            process = SSH3ClientProcess(self.conversation, channel, command, encoding, errors,
                                        stdout, stderr)
            self._processes.add(process)
            if stdin is not None:
                process._feed_stdin_from(stdin)
            return process

        return AwaitableContext(start())

    async def run(self, command: str | None = None, *, input: bytes | str | None = None,
                  check: bool = False, timeout: float | None = None,
                  **kwargs: Any) -> CompletedProcess:
        """Run `command` to its end: create_process (same keywords), send `input`
        and EOF, return the CompletedProcess. `check=True` raises ProcessError on a
        non-zero exit."""
        async with self.create_process(command, **kwargs) as process:
            if input:
                process.stdin.write(input)
            process.stdin.write_eof()
            return await process.wait(check=check, timeout=timeout)

    # ------------------------------------------------------------ forwarding

    def forward_local_port(self, listen_host: str, listen_port: int, dest_host: str,
                           dest_port: int) -> AwaitableContext[Listener]:
        """Listen on local TCP `listen_host:listen_port` (port 0: any free port, see
        `get_port()`; "" : every interface) and forward each connection to
        `dest_host:dest_port` as seen from the server (a name is resolved here)."""

        async def start() -> Listener:
            spec = ForwardSpec("tcp", listen_host or None, listen_port, dest_host, dest_port,
                               f"{listen_host}:{listen_port}:{dest_host}:{dest_port}")
            forwarder = TcpForwarder(self.conversation, spec, await resolve(spec))
            return await self._start(forwarder)

        return AwaitableContext(start())

    def open_udp_forward(self, local_port: int, remote_host: str, remote_port: int,
                         *, local_host: str = "127.0.0.1") -> AwaitableContext[Listener]:
        """Listen on local UDP `local_host:local_port` (0: any free port) and send
        each source's datagrams to `remote_host:remote_port` from the server; the
        replies come back to that source."""

        async def start() -> Listener:
            spec = ForwardSpec("udp", local_host or None, local_port, remote_host, remote_port,
                               f"{local_host}:{local_port}:{remote_host}:{remote_port}")
            forwarder = UdpForwarder(self.conversation, spec, await resolve(spec))
            return await self._start(forwarder)

        return AwaitableContext(start())

    async def _start(self, forwarder: TcpForwarder | UdpForwarder) -> Listener:
        await forwarder.start()
        listener = Listener(forwarder)
        self._listeners.append(listener)
        return listener

    async def open_connection(self, host: str, port: int
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection from the server to `host:port`, as asyncio streams.
        Raises ChannelOpenError when the server cannot connect (or refuses)."""
        spec = ForwardSpec("tcp", None, 0, host, port, f"{host}:{port}")
        channel = self.conversation.open_channel("direct-tcp", address=await resolve(spec))
        try:
            first = await channel.read()
        except BaseException:
            _finish(channel)
            raise
        if not isinstance(first, ChannelOpenConfirmation):
            _finish(channel)
            if isinstance(first, ChannelOpenFailure):
                raise ChannelOpenError(first.reason_code, first.message)
            raise ChannelOpenError(2, f"the server closed the channel to {spec.target_text}")
        # the relay of -L does the half-closes and back-pressure; a socket pair gives
        # the caller ordinary asyncio streams on the other end
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        relay = _TcpRelay(channel, reader, writer, spec, log.warning)
        relay.answered.set()

        async def run() -> None:
            try:
                await relay.run()
            finally:
                if not writer.transport.is_closing():
                    writer.close()
                _finish(channel)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.open_connection(sock=theirs)

    # ------------------------------------------------------------ end

    async def _close(self) -> None:
        self._keepalive.cancel()
        for process in list(self._processes):
            process.close()
            await process.wait_closed()
        for listener in self._listeners:
            await listener.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, self._keepalive, return_exceptions=True)
        self.conversation.close()
        await self._stack.aclose()


def _env_requests(conversation: Conversation, env: dict[str, str]) -> list[Any]:
    """`env` requests, only towards a server that announced it takes them (the
    reference would end the conversation on an unknown request type, Q2)."""
    if not env:
        return []
    from .connection import EXT_ENV
    from .messages import EnvRequest

    if not conversation.peer_extensions & EXT_ENV:
        raise ValueError("this server does not accept environment variables (env=)")
    return [EnvRequest(name, value.encode("utf-8", "surrogateescape"))
            for name, value in env.items()]


def _parse_destination(destination: str, port: int | None, path: str | None,
                       user: str | None) -> tuple[str, int, str, str]:
    url = urlsplit(destination if "://" in destination else "https://" + destination)
    if not url.hostname:
        raise ValueError(f"bad destination {destination!r}: expected [user@]host[:port][/path]")
    query_user = parse_qs(url.query).get("user", [None])[0]
    name = (unquote(url.username) if url.username else None) or query_user or user \
        or getpass.getuser()
    the_path = url.path or path or "/ssh3-term"
    return url.hostname, url.port or port or 443, the_path, name


def _identities(keys: Sequence[Any] | None) -> list[Identity]:
    explicit = keys is not None
    out: list[Identity] = []
    for item in keys if keys is not None else DEFAULT_IDENTITIES:
        if isinstance(item, str):
            path = os.path.expanduser(item)
            if not explicit and not os.path.exists(path):
                continue
            out.append(private_key_identity(path, load_private_key(path)))
        else:
            out.append(private_key_identity(type(item).__name__, item))
    return out


def connect(destination: str, *, port: int | None = None, path: str | None = None,
                  username: str | None = None, client_keys: Sequence[Any] | None = None,
                  known_hosts: str | Sequence[bytes] | None = None, accept_new: bool = False,
                  insecure: bool = False, backend: str | None = None,
                  connect_timeout: float = 15.0,
                  keepalive_interval: float = KEEPALIVE_INTERVAL,
                  tunnel: str | Sequence[str] | None = None
                  ) -> AwaitableContext[Connection]:
    """Connect and authenticate to `[user@]host[:port][/path]`: `async with
    ssh3.connect(...) as conn`, or `conn = await ssh3.connect(...)` then
    `conn.close()` and `await conn.wait_closed()`.

    `client_keys`: key file paths or private keys (default: ~/.ssh/id_ed25519, id_ecdsa,
    id_rsa that exist). `known_hosts`: a known_hosts file (default
    ~/.ssh3/known_hosts), or the server certificates (DER) to accept, nothing else.
    Raises `ssh3.aio.client.SSH3ClientError` subclasses on failure (HostKeyError,
    AuthenticationFailed, ServerNotFound, …).

    `tunnel`: jump hosts to go through, `"[user@]host[:port][/path]"` or several
    (a list, or comma-separated), like `ssh3 -J`; each is authenticated with the same
    keys and checked against the same known_hosts (docs/proxyjump.md)."""
    host, the_port, the_path, user = _parse_destination(destination, port, path, username)
    if isinstance(tunnel, str):
        tunnel = [hop.strip() for hop in tunnel.split(",")]
    hops = [_parse_destination(hop, None, None, None) for hop in tunnel or []]
    pinned = None if known_hosts is None or isinstance(known_hosts, str) else list(known_hosts)
    known_path = os.path.expanduser(
        known_hosts if isinstance(known_hosts, str) else default_path())

    def verifier(canonical: str) -> Any:
        async def verify(der: bytes, chain: list[bytes] | None = None) -> None:
            await _verify(canonical, der)
        return verify

    async def _verify(canonical: str, der: bytes) -> None:
        if pinned is not None:
            if der not in pinned:
                raise HostKeyError(f"the certificate of {canonical} is not one of the "
                                   f"{len(pinned)} given in known_hosts=")
            return
        known = KnownHosts.load(known_path)
        state = known.check(canonical, der)
        if state == "match":
            return
        if state == "mismatch":
            lines = [e.line_number for e in known.entries_for(canonical)]
            raise HostKeyError(mismatch_message(known_path, canonical, lines, der))
        if not accept_new:
            raise HostKeyError(f"no certificate known for {canonical} in {known_path}: pass "
                               "accept_new=True to remember it on first use")
        known.add(canonical, der)

    def params_for(host: str, port: int, path: str, user: str, carried: int,
                   hop_backend: str | None) -> ConnectParams:
        return ConnectParams(host=host, port=port, path=path, user=user,
                             identities=_identities(client_keys), backend=hop_backend,
                             insecure=insecure,
                             verify_certificate=verifier(canonical_host(host, port, path)),
                             connect_timeout=connect_timeout,
                             max_datagram_size=hop_packet_size(carried) if carried else None)

    params = params_for(host, the_port, the_path, user, 0, backend)

    async def open() -> Connection:
        stack = contextlib.AsyncExitStack()
        try:
            via, label = None, ""
            for index, (h, p, pa, u) in enumerate(hops):  # each through the one before
                carried = len(hops) - index
                hop_params = params_for(h, p, pa, u, carried,
                                        jump_backend(backend, hop_packet_size(carried)))
                hop_params.via, hop_params.via_label = via, label
                label = f"{u}@{h}:{p}{pa}"
                try:
                    hop_protocol = await stack.enter_async_context(
                        open_connection(hop_params))
                    via = await establish(hop_protocol, hop_params)
                except SSH3ClientError as exc:
                    raise type(exc)(f"jump host {label}: {exc}") from exc
                stack.callback(via.close, "proxy jump done")
            params.via, params.via_label = via, label
            protocol = await stack.enter_async_context(open_connection(params))
            conversation = await establish(protocol, params)
            await wait_settings(protocol)
        except BaseException:
            await stack.aclose()
            raise
        return Connection(protocol, conversation, stack, keepalive_interval)

    return AwaitableContext(open())


async def _keep_alive(protocol: Any, interval: float) -> None:
    """A quiet connection (a forwarded port nobody uses) must not reach the QUIC
    idle timeout: PING every `interval` seconds (0: never)."""
    while interval > 0 and not protocol.terminated.is_set():
        await asyncio.sleep(interval)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(protocol.ping(), interval)
