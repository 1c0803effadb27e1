"""Client side of EXT_EARLY_CHANNELS: channels sent right behind the CONNECT.

Only towards a server that announced the extension in its SETTINGS. Our server
sends them in its first flight (0.5-RTT data; see `release_early_streams` in the
aioquic adapter), so they are here by the time the handshake completes, or a few
milliseconds later when that flight spans several datagrams. `SETTINGS_WAIT`
bounds the wait: a server that sends its SETTINGS later (a round trip later) is
not worth waiting for, and gets the usual 3-RTT flow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..connection import H3_REQUEST_INCOMPLETE
from .conversation import Conversation

if TYPE_CHECKING:
    from .protocol import SSH3Protocol

EarlyOpener = Callable[[Conversation], None]
SETTINGS_WAIT = 0.02


def open_early(protocol: SSH3Protocol, control_stream_id: int,
               early: EarlyOpener) -> Conversation:
    """The conversation of the CONNECT just sent on `control_stream_id`, with the
    channels `early` opens on it, all in the CONNECT's flight."""
    conv = Conversation(protocol, control_stream_id)
    early(conv)
    protocol.transmit_soon()
    return conv


def drop_early(conv: Conversation, reason: str) -> None:
    """The CONNECT was refused: reset the channels opened on its conversation (the
    server has reset them already, unread) and end it."""
    protocol = conv.protocol
    for channel in [ch for ch in protocol.channels.values()
                    if ch.control_stream_id == conv.control_stream_id]:
        if channel.error is None:
            channel.reset(H3_REQUEST_INCOMPLETE)
        protocol.forget_channel(channel.channel_id)
    conv._ended(reason)
