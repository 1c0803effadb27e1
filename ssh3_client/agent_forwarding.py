"""Client side of agent forwarding (`-A`, `-forward-agent`; PROTOCOL.md §3.7).

The server opens one `agent-connection` channel per connection on the forwarded
socket. With -A we confirm it (MPS 30000), connect to the local agent and relay Data
both ways; without -A, or for any other server-opened type, the channel is reset.
Errors end that one channel, never the program.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from ssh3.aio.channel import (
    DEFAULT_MAX_PACKET_SIZE,
    Channel,
    ChannelClosed,
    run_until_first_ends,
)
from ssh3.aio.conversation import Conversation
from ssh3.connection import H3_REQUEST_CANCELLED as CHANNEL_ABORTED
from ssh3.connection import H3_REQUEST_REJECTED as CHANNEL_REJECTED
from ssh3.messages import (
    AGENT_CHANNEL_TYPE,
    ChannelData,
    ChannelOpenConfirmation,
)

log = logging.getLogger("ssh3.client.agent")

READ_SIZE = 16 * 1024
CONNECT_TIMEOUT = 10.0


def agent_socket(options: dict[str, str]) -> str | None:
    """The local agent to forward: -o IdentityAgent (as OpenSSH), else $SSH_AUTH_SOCK."""
    configured = options.get("identityagent", "")
    if configured.lower() == "none":
        return None
    if configured and configured.upper() != "SSH_AUTH_SOCK":
        return os.path.expanduser(configured)
    return os.environ.get("SSH_AUTH_SOCK") or None


class AgentChannels:
    """Handles every channel the server opens on one conversation."""

    def __init__(self, conv: Conversation, enabled: bool, socket_path: str | None) -> None:
        self.conv = conv
        self.enabled = enabled
        self.socket_path = socket_path
        self._tasks: set[asyncio.Task[None]] = set()
        conv.on_channel = self._on_channel
        conv.add_end_callback(lambda _c: self.close())

    def _on_channel(self, channel: Channel) -> None:
        if channel.channel_type != AGENT_CHANNEL_TYPE or not self.enabled:
            log.debug("server opened a %s channel (%d) we did not ask for; reset",
                      channel.channel_type, channel.channel_id)
            _reject(channel)
            return
        task = asyncio.ensure_future(self._serve(channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, channel: Channel) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            if self.socket_path is None:
                log.info("agent connection from the server, but no local agent")
                _reject(channel)
                return
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(self.socket_path), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                log.info("cannot reach the local agent %s: %s", self.socket_path, exc)
                _reject(channel)
                return
            channel.send(ChannelOpenConfirmation(DEFAULT_MAX_PACKET_SIZE))
            await _relay(channel, reader, writer)
        except (OSError, ChannelClosed) as exc:
            log.debug("agent channel %d ended: %s", channel.channel_id, exc)
        except Exception:  # noqa: BLE001 - never let the agent relay end the program
            log.exception("agent channel %d failed", channel.channel_id)
        finally:
            if writer is not None and not writer.transport.is_closing():
                writer.transport.abort()
            _finish(channel)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def _relay(channel: Channel, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    """Until the server FINs the channel (its agent client left), the local agent
    closes, or either side breaks."""

    async def from_server() -> None:
        while True:
            msg = await channel.read()
            if msg is None:
                return
            if not isinstance(msg, ChannelData):
                # §3.7: anything but Data ends the relay
                return
            writer.write(msg.data)
            await writer.drain()

    async def from_agent() -> None:
        sent = False
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                if sent:
                    # a FIN behind Data with a payload is safe (Q7), where a reset
                    # could drop replies still in flight
                    channel.send_eof()
                return
            await channel.write(data)
            sent = True

    await run_until_first_ends([from_server(), from_agent()])


def _reject(channel: Channel) -> None:
    with contextlib.suppress(Exception):
        channel.abort(CHANNEL_REJECTED)
    with contextlib.suppress(Exception):
        channel.protocol.forget_channel(channel.channel_id)


def _finish(channel: Channel) -> None:
    """Complete the stream. The reference client never FINs an agent channel; a reset
    of our direction is what it ignores best (its relay stops on any error)."""
    protocol: Any = channel.protocol
    with contextlib.suppress(Exception):
        if not channel.eof_received and channel.error is None:
            protocol.stop_channel(channel.channel_id, CHANNEL_ABORTED)
        if not channel.eof_sent and channel.error is None:
            protocol.reset_channel(channel.channel_id, CHANNEL_ABORTED)
        protocol.forget_channel(channel.channel_id)
