"""Server side of agent forwarding (PROTOCOL.md §3.7).

A session whose first message is Data `forward-agent` gets a private directory with
a unix socket `agent.<pid>` in it; `SSH_AUTH_SOCK` names it in the session's
environment. Each connection on that socket becomes a server-initiated
`agent-connection` channel: its header goes out with the first Data (the bytes the
agent client wrote first), then bytes are relayed both ways. Unlike the reference we
remove the directory and the socket when the session or the conversation ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from typing import Any

from ssh3.aio.channel import (
    DEFAULT_MAX_PACKET_SIZE,
    Channel,
    ChannelClosed,
    run_until_first_ends,
)
from ssh3.aio.conversation import Conversation
from ssh3.connection import H3_REQUEST_CANCELLED as CHANNEL_ABORTED
from ssh3.messages import (
    AGENT_CHANNEL_TYPE,
    ChannelData,
    ChannelOpenConfirmation,
)

log = logging.getLogger("ssh3.server.agent")

READ_SIZE = 16 * 1024


class AgentForwarder:
    """One forwarded-agent socket, for one session of one conversation."""

    def __init__(self, conv: Conversation, uid: int | None, gid: int | None,
                 username: str) -> None:
        self.conv = conv
        # chown targets: only when we run as root and serve another user
        self.uid = uid
        self.gid = gid
        self.username = username
        self.directory: str | None = None
        self.path: str | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    async def start(self) -> str:
        """Create the directory and the listening socket; return the socket's path.
        Raises OSError (and cleans up) when that fails."""
        directory = tempfile.mkdtemp(prefix="ssh3-agent-")  # mode 0700 by mkdtemp
        self.directory = directory
        try:
            path = os.path.join(directory, f"agent.{os.getpid()}")
            self._server = await asyncio.start_unix_server(self._accepted, path)
            # the socket is reachable only through the 0700 directory; keep it 0600
            # too in case the directory's mode is ever loosened
            os.chmod(path, 0o600)
            if self.uid is not None:
                os.chown(directory, self.uid, self.gid if self.gid is not None else -1)
                os.chown(path, self.uid, self.gid if self.gid is not None else -1)
        except OSError:
            self.close()
            raise
        self.path = path
        # the socket must not outlive the conversation (the reference leaves it behind)
        self.conv.add_end_callback(lambda _c: self.close())
        log.info("agent forwarding for %s on %s", self.username, path)
        return path

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.closed or self.conv.ended.is_set():
            writer.transport.abort()
            return
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel: Channel | None = None
        try:
            # the header goes out with the first Data (§3.7); a client that connects
            # and leaves without a byte costs no channel
            first = await reader.read(READ_SIZE)
            if not first:
                return
            channel = self.conv.open_channel(AGENT_CHANNEL_TYPE, first=ChannelData(first),
                                             max_packet_size=DEFAULT_MAX_PACKET_SIZE)
            log.debug("agent connection for %s on channel %d", self.username,
                      channel.channel_id)
            await _relay(channel, reader, writer)
        except (OSError, ChannelClosed) as exc:
            log.debug("agent connection for %s ended: %s", self.username, exc)
        except Exception:  # noqa: BLE001 - one broken connection must not hurt others
            log.exception("agent connection for %s failed", self.username)
        finally:
            if not writer.transport.is_closing():
                writer.transport.abort()
            if channel is not None:
                _finish(channel)

    def close(self) -> None:
        """Stop listening, end the relays, remove the socket and the directory."""
        if self.closed:
            return
        self.closed = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            log.debug("agent socket directory %s removed", self.directory)


async def _relay(channel: Channel, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    """Relay until the unix client closes (then FIN the channel, as the reference) or
    the client side ends the channel."""

    async def from_client() -> None:
        while True:
            msg = await channel.read()
            if msg is None:
                return
            if isinstance(msg, ChannelOpenConfirmation):
                continue
            if not isinstance(msg, ChannelData):
                # §3.7: anything but Data ends the relay
                log.debug("agent channel %d: %s ends the relay", channel.channel_id,
                          type(msg).__name__)
                return
            writer.write(msg.data)
            await writer.drain()

    async def to_client() -> None:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                # our FIN follows Data with a payload (the first one at least): safe (Q7)
                with contextlib.suppress(Exception):
                    channel.send_eof()
                return
            await channel.write(data)

    await run_until_first_ends([from_client(), to_client()])


def _finish(channel: Channel) -> None:
    """Complete the stream on both ends: the reference client never FINs its side."""
    protocol: Any = channel.protocol
    with contextlib.suppress(Exception):
        if not channel.eof_received and channel.error is None:
            protocol.stop_channel(channel.channel_id, CHANNEL_ABORTED)
        if not channel.eof_sent and channel.error is None:
            protocol.reset_channel(channel.channel_id, CHANNEL_ABORTED)
        protocol.forget_channel(channel.channel_id)
