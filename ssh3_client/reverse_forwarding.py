"""Client side of remote forwarding: `-R [bind_address:]port:host:hostport`.

Our extension EXT_REVERSE_TCP (docs/extensions.md, "Remote forwarding"); the
reference has no working reverse forwarding (PROTOCOL.md §4.4), so towards a server
that did not announce the bit nothing is sent and the user is told "remote
forwarding (-R) is not supported by this server".

Per -R we open one `reverse-tcp-listen@ssh3-py` channel; the server answers
ChannelOpenConfirmation then `reverse-tcp-bound@ssh3-py` (the bound port), or
ChannelOpenFailure. The server then opens one `reverse-tcp@ssh3-py` channel per
connection its listener accepts, naming the listen channel; we connect to the
forward's host:hostport (resolved here, as OpenSSH does) and relay.

Failures follow OpenSSH's ExitOnForwardFailure: by default a warning and the run
goes on; with `-o ExitOnForwardFailure=yes` the client exits 255 before the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ssh3.aio.channel import DEFAULT_MAX_PACKET_SIZE, Channel, ChannelClosed
from ssh3.aio.conversation import Conversation
from ssh3.aio.tcp_relay import TcpRelay, finish, send_fin
from ssh3.aio.tcp_relay import os_reason as _reason
from ssh3.connection import EXT_REVERSE_TCP
from ssh3.connection import H3_REQUEST_REJECTED as CHANNEL_REJECTED
from ssh3.messages import (
    MAX_TARGET_HOST_LEN,
    REVERSE_LISTEN_CHANNEL_TYPE,
    REVERSE_TCP_CHANNEL_TYPE,
    ChannelHeader,
    ChannelOpenConfirmation,
    ChannelOpenFailure,
    ReverseTcpBoundRequest,
)

from .forwarding import ForwardError, _split_colons, host_port

log = logging.getLogger("ssh3.client.reverse")

NOT_SUPPORTED = "remote forwarding (-R) is not supported by this server"
ANSWER_TIMEOUT = 15.0  # for the server's answer to a listen request
CONNECT_TIMEOUT = 10.0  # for our connection to the forward's target
OPEN_CONNECT_FAILED = 2
DEFAULT_BIND = "localhost"  # OpenSSH: loopback on the server unless told otherwise

Report = Callable[[str], None]


def _stderr(text: str) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.write(f"ssh3: {text}\n")
        sys.stderr.flush()


@dataclass(frozen=True)
class RemoteForwardSpec:
    bind: str  # what the server is asked to listen on: "localhost", "*" or an address
    port: int  # 0: the server picks (reported as "Allocated port N ...")
    target_host: str  # connected to from here (a name is resolved here)
    target_port: int
    text: str  # the flag as given, for messages

    @property
    def target_text(self) -> str:
        return host_port(self.target_host, self.target_port)


def _port(text: str, spec: str, allow_zero: bool) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ForwardError(f"bad port {text!r} in -R {spec!r}") from None
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ForwardError(f"bad port {text!r} in -R {spec!r}")
    return port


def parse_remote_forward(text: str) -> RemoteForwardSpec:
    """OpenSSH's `-R [bind_address:]port:host:hostport`. Without a bind address the
    server listens on loopback; an empty one or `*` asks for every interface (which
    the server grants only with -gateway-ports). Port 0 lets the server pick."""
    parts = _split_colons(text)
    if len(parts) == 3:
        bind = DEFAULT_BIND
        port, host, hport = parts
    elif len(parts) == 4:
        bind, port, host, hport = parts
        bind = bind or "*"
    elif len(parts) in (1, 2):
        raise ForwardError(f"bad -R {text!r}: only [bind_address:]port:host:hostport is "
                           "supported (no dynamic or socket remote forwarding)")
    else:
        raise ForwardError(f"bad -R {text!r}: expected [bind_address:]port:host:hostport")
    if not host:
        raise ForwardError(f"bad -R {text!r}: no target host")
    if len(bind.encode()) > MAX_TARGET_HOST_LEN:
        raise ForwardError(f"bad -R {text!r}: bind address too long")
    return RemoteForwardSpec(bind, _port(port, text, True), host, _port(hport, text, False),
                             text)


def parse_config_remote_forward(value: str) -> RemoteForwardSpec:
    """`RemoteForward [bind:]port host:hostport` from ssh_config."""
    words = value.split()
    if len(words) != 2:
        raise ForwardError(f"bad RemoteForward {value!r}: expected [bind:]port host:hostport")
    return parse_remote_forward(f"{words[0]}:{words[1]}")


class _Forward:
    """One -R: its listen channel and the server's answer."""

    def __init__(self, spec: RemoteForwardSpec, channel: Channel) -> None:
        self.spec = spec
        self.channel = channel
        self.answered = asyncio.get_running_loop().create_future()  # bound port or error
        self.bound_port: int | None = None
        self.watcher: asyncio.Task[None] | None = None

    def answer(self, value: int | str) -> None:
        if not self.answered.done():
            self.answered.set_result(value)


class RemoteForwarding:
    """Every -R of one run as an async context: the listen requests are answered
    before the body runs, and the server's listeners go away when it exits."""

    def __init__(self, conv: Conversation, specs: list[RemoteForwardSpec], *,
                 exit_on_failure: bool = False, report: Report = _stderr) -> None:
        self.conv = conv
        self.specs = specs
        self.exit_on_failure = exit_on_failure
        self.report = report
        self.forwards: dict[int, _Forward] = {}  # listen channel ID -> forward
        self.connections: set[asyncio.Task[None]] = set()
        self._previous: Callable[[Channel], None] | None = None

    async def __aenter__(self) -> RemoteForwarding:
        if not self.specs:
            return self
        if not self.conv.peer_extensions & EXT_REVERSE_TCP:
            self._fail(NOT_SUPPORTED)
            return self
        # channels the server opens: ours here, the rest to whoever handled them
        self._previous = self.conv.on_channel
        self.conv.on_channel = self._on_channel
        try:
            for spec in self.specs:
                header = ChannelHeader(self.conv.control_stream_id,
                                       REVERSE_LISTEN_CHANNEL_TYPE, DEFAULT_MAX_PACKET_SIZE,
                                       (spec.bind, spec.port))
                channel = self.conv.protocol.open_channel(self.conv, header)
                forward = _Forward(spec, channel)
                forward.watcher = asyncio.ensure_future(self._watch(forward))
                self.forwards[channel.channel_id] = forward
            await self._collect_answers()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _fail(self, text: str) -> None:
        if self.exit_on_failure:
            raise ForwardError(text)
        self.report(f"Warning: {text}")

    async def _collect_answers(self) -> None:
        forwards = list(self.forwards.values())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(f.answered)
                                                    for f in forwards)), ANSWER_TIMEOUT)
        for forward in forwards:
            spec = forward.spec
            result = forward.answered.result() if forward.answered.done() \
                else f"no answer from the server within {ANSWER_TIMEOUT:.0f} s"
            if isinstance(result, str):
                self._fail(f"remote port forwarding failed for listen port {spec.port} "
                           f"({spec.text}): {result}")
            elif spec.port == 0:
                # OpenSSH's wording, which scripts parse
                self.report(f"Allocated port {result} for remote forward to "
                            f"{spec.target_text}")
            else:
                log.info("remote forward: server port %d -> %s", result, spec.target_text)

    async def _watch(self, forward: _Forward) -> None:
        """The listen channel carries the server's answer, then nothing until its end."""
        channel = forward.channel
        why = "closed by the server"
        try:
            while True:
                msg = await channel.read()
                if msg is None:
                    break
                if isinstance(msg, ChannelOpenFailure):
                    forward.answer(msg.message or f"refused (code {msg.reason_code})")
                    why = msg.message
                    break
                if isinstance(msg, ReverseTcpBoundRequest):
                    if not 0 < msg.port <= 65535 or (forward.spec.port
                                                     and msg.port != forward.spec.port):
                        forward.answer(f"the server reported a wrong port ({msg.port})")
                        why = "wrong port"
                        break
                    forward.bound_port = msg.port
                    forward.answer(msg.port)
                elif not isinstance(msg, ChannelOpenConfirmation):
                    log.debug("listen channel %d: %s ignored", channel.channel_id,
                              type(msg).__name__)
        except ChannelClosed as exc:
            why = str(exc)
        if not forward.answered.done():
            forward.answer(f"the server ended the request ({why})")
        elif forward.bound_port is not None and not self.conv.ended.is_set():
            self.report(f"remote forward on server port {forward.bound_port} ended: {why}")
        send_fin(channel)

    # ------------------------------------------------------------ connections

    def _on_channel(self, channel: Channel) -> None:
        if channel.channel_type != REVERSE_TCP_CHANNEL_TYPE:
            if self._previous is not None:
                self._previous(channel)
            else:
                _reject(channel)
            return
        listener_id = channel.header.listener_id
        forward = self.forwards.get(listener_id) if listener_id is not None else None
        if forward is None:
            log.warning("the server opened reverse-tcp channel %d for unknown listener %s; "
                        "reset", channel.channel_id, channel.header.listener_id)
            _reject(channel)
            return
        task = asyncio.ensure_future(self._serve(forward, channel))
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)

    async def _serve(self, forward: _Forward, channel: Channel) -> None:
        spec = forward.spec
        origin = host_port(*channel.header.address) if channel.header.address else "?"
        label = (f"remote forward {forward.bound_port or spec.port} -> {spec.target_text} "
                 f"(from {origin})")
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(spec.target_host, spec.target_port),
                    CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                reason = _reason(exc)
                self.report(f"remote forward: connect to {spec.target_text} failed: {reason}")
                channel.send(ChannelOpenFailure(
                    OPEN_CONNECT_FAILED, f"connect to {spec.target_text} failed: {reason}",
                    "en"))
                send_fin(channel)
                return
            channel.send(ChannelOpenConfirmation(DEFAULT_MAX_PACKET_SIZE))
            log.debug("%s: connected", label)
            await TcpRelay(channel, reader, writer, label).run()
        except ChannelClosed as exc:
            log.debug("%s: %s", label, exc)
        except Exception:  # noqa: BLE001 - one connection must not end the program
            log.exception("%s failed", label)
        finally:
            if writer is not None and not writer.transport.is_closing():
                writer.transport.abort()
            finish(channel)

    async def close(self) -> None:
        """End every listen request (the server closes those listeners) and every
        relayed connection."""
        if self._previous is not None and self.conv.on_channel == self._on_channel:
            self.conv.on_channel = self._previous
        tasks = [*self.connections]
        for forward in self.forwards.values():
            if forward.watcher is not None:
                tasks.append(forward.watcher)
            with contextlib.suppress(Exception):
                send_fin(forward.channel)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for forward in self.forwards.values():
            with contextlib.suppress(Exception):
                finish(forward.channel)
        self.forwards.clear()


def _reject(channel: Channel) -> None:
    with contextlib.suppress(Exception):
        channel.abort(CHANNEL_REJECTED)
    with contextlib.suppress(Exception):
        channel.protocol.forget_channel(channel.channel_id)
