"""Server side of EXT_EARLY_CHANNELS: channels that name a CONNECT still being
authenticated are held, replayed to the conversation after the 200, or reset after
a refusal (docs/extensions.md, "Early channels").

Pure bookkeeping, no I/O: the protocol asks `admit` whether a new channel is held,
reports the bytes that arrive on held channels with `add_bytes`, and the server calls
`expect` (a CONNECT is being authenticated), `release` (200 sent) or `discard`
(refused). Every method returns what must be reset; the caller resets it.
Nothing of a held channel reaches a conversation (hence a session) before `release`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")  # the protocol's channel object

# a client sends one session channel with a few requests (pty-req, env, exec) early;
# these caps only bound what an unauthenticated peer can make us keep
MAX_CHANNELS_PER_CONVERSATION = 4
MAX_BYTES_PER_CONVERSATION = 64 * 1024
# channels naming a control stream whose request has not arrived yet (reordered
# packets): at most this many such control streams per connection
MAX_UNANNOUNCED_CONVERSATIONS = 2


@dataclass
class _Hold(Generic[T]):
    expected: bool  # the CONNECT arrived and is being authenticated
    channels: dict[int, T] = field(default_factory=dict)
    nbytes: int = 0


class EarlyChannels(Generic[T]):
    """Held channels of one QUIC connection, by control stream ID."""

    def __init__(self, max_channels: int = MAX_CHANNELS_PER_CONVERSATION,
                 max_bytes: int = MAX_BYTES_PER_CONVERSATION,
                 max_unannounced: int = MAX_UNANNOUNCED_CONVERSATIONS) -> None:
        self.max_channels = max_channels
        self.max_bytes = max_bytes
        self.max_unannounced = max_unannounced
        self._holds: dict[int, _Hold[T]] = {}
        self._owner: dict[int, int] = {}  # channel ID -> control stream ID

    def __len__(self) -> int:
        return len(self._owner)

    def is_held(self, channel_id: int) -> bool:
        return channel_id in self._owner

    def is_expected(self, control_stream_id: int) -> bool:
        hold = self._holds.get(control_stream_id)
        return hold is not None and hold.expected

    def expect(self, control_stream_id: int) -> None:
        """A CONNECT arrived on this stream and is being authenticated."""
        hold = self._holds.setdefault(control_stream_id, _Hold(expected=True))
        hold.expected = True

    def admit(self, control_stream_id: int, channel_id: int, channel: T,
              unannounced_ok: bool) -> tuple[bool, str]:
        """Hold a new channel? (held, why not; "" when nothing names this control
        stream, which the caller treats as an unknown conversation). `unannounced_ok`: the
        control stream has not been seen at all yet, so its CONNECT may still come."""
        hold = self._holds.get(control_stream_id)
        if hold is None:
            if not unannounced_ok:
                return False, ""  # no such conversation: the caller's usual reset
            unannounced = sum(1 for h in self._holds.values() if not h.expected)
            if unannounced >= self.max_unannounced:
                return False, "too many channels for requests not received yet"
            hold = self._holds[control_stream_id] = _Hold(expected=False)
        if len(hold.channels) >= self.max_channels:
            return False, (f"more than {self.max_channels} channels before "
                           "authentication")
        hold.channels[channel_id] = channel
        self._owner[channel_id] = control_stream_id
        return True, ""

    def add_bytes(self, channel_id: int, nbytes: int) -> list[T]:
        """Bytes arrived on a held channel; past the cap every channel of that
        conversation is dropped and returned (to be reset)."""
        control = self._owner.get(channel_id)
        if control is None:
            return []
        hold = self._holds[control]
        hold.nbytes += nbytes
        if hold.nbytes <= self.max_bytes:
            return []
        return self._drop(control)

    def forget(self, channel_id: int) -> None:
        """A held channel ended on its own (reset by the peer)."""
        control = self._owner.pop(channel_id, None)
        if control is not None:
            self._holds[control].channels.pop(channel_id, None)

    def release(self, control_stream_id: int) -> list[T]:
        """Authentication succeeded: the held channels, oldest first, for the
        conversation."""
        return self._drop(control_stream_id)

    def discard(self, control_stream_id: int) -> list[T]:
        """Authentication failed (or the request was no CONNECT): the held channels,
        to be reset."""
        return self._drop(control_stream_id)

    def discard_all(self) -> list[T]:
        out: list[T] = []
        for control in list(self._holds):
            out += self._drop(control)
        return out

    def _drop(self, control_stream_id: int) -> list[T]:
        hold = self._holds.pop(control_stream_id, None)
        if hold is None:
            return []
        for cid in hold.channels:
            self._owner.pop(cid, None)
        return list(hold.channels.values())
