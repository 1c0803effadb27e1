"""`-W host:port`: stdio forwarding (OpenSSH's), mostly as a ProxyCommand.

No session: one TCP channel to host:port, relayed to this process's stdin and
stdout, half-closed both ways (stdin EOF sends a FIN; the channel's FIN ends the
client with status 0 once stdout has everything). A name goes to the server in a
`direct-tcp-name@ssh3-py` channel when it announced EXT_TCP_BY_NAME (it resolves,
as OpenSSH's server does); otherwise it is resolved here and `direct-tcp` carries
the address. See docs/forwarding.md.

    ssh -o ProxyCommand='ssh3 -W %h:%p jump/secret' target
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import sys
from dataclasses import dataclass

from ssh3.aio.channel import Channel, ChannelClosed
from ssh3.aio.conversation import Conversation
from ssh3.connection import EXT_TCP_BY_NAME, STOP_SENDING_TCP_WRITE_FAILED
from ssh3.messages import (
    TCP_BY_NAME_CHANNEL_TYPE,
    ChannelData,
    ChannelOpenConfirmation,
    ChannelOpenFailure,
)

from .forwarding import (
    ForwardError,
    ForwardSpec,
    _finish,
    _port,
    _split_colons,
    host_port,
    resolve,
    send_fin,
)
from .terminal import StdinReader, write_all

log = logging.getLogger("ssh3.client.stdio")

EXIT_FAILED = 255
ANSWER_TIMEOUT = 30.0


@dataclass(frozen=True)
class StdioTarget:
    host: str
    port: int

    @property
    def text(self) -> str:
        return host_port(self.host, self.port)

    @property
    def is_name(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return True
        return False


def parse_stdio_target(text: str) -> StdioTarget:
    """`host:port` or `[v6]:port`."""
    try:
        parts = _split_colons(text)
    except ForwardError:
        raise ForwardError(f"bad -W {text!r}: expected host:port") from None
    if len(parts) != 2 or not parts[0]:
        raise ForwardError(f"bad -W {text!r}: expected host:port")
    return StdioTarget(parts[0], _port(parts[1], text))


def _fail(reason: str) -> int:
    with contextlib.suppress(OSError):
        sys.stderr.write(f"ssh3: stdio forwarding failed: {reason}\n")
        sys.stderr.flush()
    return EXIT_FAILED


async def _channel_for(conv: Conversation, target: StdioTarget) -> tuple[str, tuple[str, int]]:
    if target.is_name and conv.peer_extensions & EXT_TCP_BY_NAME:
        return TCP_BY_NAME_CHANNEL_TYPE, (target.host, target.port)
    spec = ForwardSpec("tcp", None, 0, target.host, target.port, f"-W {target.text}")
    return "direct-tcp", await resolve(spec)


async def stdio_forward(conv: Conversation, target: StdioTarget, stdin_fd: int = 0,
                        stdout_fd: int = 1) -> int:
    """Relay stdin/stdout to target through the server; the exit status."""
    try:
        channel_type, address = await _channel_for(conv, target)
    except ForwardError as exc:
        return _fail(str(exc))
    if conv.ended.is_set():
        return _fail(conv.end_reason or "the conversation ended")
    channel = conv.open_channel(channel_type, address=address)
    log.debug("-W %s: %s channel %d to %s", target.text, channel_type, channel.channel_id,
              host_port(*address))
    try:
        return await _relay(channel, target, stdin_fd, stdout_fd)
    finally:
        _finish(channel)


async def _relay(channel: Channel, target: StdioTarget, stdin_fd: int, stdout_fd: int) -> int:
    # the answer first: a FIN right behind the header breaks the reference's header
    # parsing (§3.3), and a refusal must not look like an empty stream
    early: list[bytes] = []
    try:
        while True:
            msg = await asyncio.wait_for(channel.read(), ANSWER_TIMEOUT)
            if msg is None:
                return _fail(f"{target.text}: the server closed the channel")
            if isinstance(msg, ChannelOpenConfirmation):
                break
            if isinstance(msg, ChannelOpenFailure):
                return _fail(f"{target.text}: {msg.message}")
            if isinstance(msg, ChannelData):  # a peer may skip the confirmation (§3.4)
                early.append(msg.data)
                break
    except ChannelClosed as exc:
        return _fail(f"{target.text}: {exc}")
    except TimeoutError:
        return _fail(f"{target.text}: no answer from the server within {ANSWER_TIMEOUT:.0f} s")

    loop = asyncio.get_running_loop()
    stdin = StdinReader(stdin_fd, loop)
    stdin.start()

    async def to_server() -> None:
        while True:
            data = await stdin.read()
            if not data:
                send_fin(channel)
                return
            await channel.write(data)

    async def from_server() -> int:
        for data in early:
            await asyncio.to_thread(write_all, stdout_fd, data)
        while True:
            try:
                msg = await channel.read()
            except ChannelClosed as exc:
                with contextlib.suppress(OSError):
                    sys.stderr.write(f"ssh3: -W {target.text}: the channel broke: {exc}\n")
                return EXIT_FAILED
            if msg is None:
                return 0
            if isinstance(msg, ChannelData) and msg.data:
                try:
                    # a thread: stdout stays blocking, and a slow reader does not
                    # stall the event loop (QUIC acknowledgements, PINGs)
                    await asyncio.to_thread(write_all, stdout_fd, msg.data)
                except OSError:
                    # our reader went away: tell the server, as -L does
                    channel.protocol.stop_channel(channel.channel_id,
                                                  STOP_SENDING_TCP_WRITE_FAILED)
                    return EXIT_FAILED

    sender = asyncio.ensure_future(to_server())
    receiver = asyncio.ensure_future(from_server())
    pending = {sender, receiver}
    try:
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:
                # every write was a blocking one, done: stdout has it all
                return receiver.result()
            exc = sender.exception()
            if isinstance(exc, ChannelClosed):
                # the server stopped reading: what it sent may still come
                log.debug("-W %s: sending ended: %s", target.text, exc)
            elif exc is not None:
                raise exc
    finally:
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
