"""`ssh3 host cmd` in 2 round trips: the session channel and its requests go right
behind the CONNECT when the server announced EXT_EARLY_CHANNELS (docs/extensions.md).

`EarlySession.open` is the `early` callback of `ssh3.aio.client.establish`; it is
called once per CONNECT attempt (a refused attempt's channel is dropped there).
"""

from __future__ import annotations

from collections.abc import Callable

from ssh3.aio.channel import Channel
from ssh3.aio.conversation import Conversation

from .session import SessionRequest, open_session


class EarlySession:
    def __init__(self, request: SessionRequest, stdin_fd: int,
                 setup: Callable[[Conversation], None]) -> None:
        self.request = request
        self.stdin_fd = stdin_fd
        # what must be in place before the server can open channels towards us
        # (the agent-channel handler with -A)
        self.setup = setup
        self.conv: Conversation | None = None
        self.channel: Channel | None = None

    def open(self, conv: Conversation) -> None:
        self.setup(conv)
        self.conv = conv
        self.channel = open_session(conv, self.request, self.stdin_fd)

    def used_on(self, conv: Conversation) -> bool:
        return self.conv is conv

    def channel_for(self, conv: Conversation) -> Channel | None:
        return self.channel if self.conv is conv else None


def plain_session(no_command: bool, stdio_forward: object, forwards: list,
                  dynamic: list) -> bool:
    """Only a bare session goes early: with -L/-D the listeners are up before the
    session starts (as today; -R is among `forwards`), and -N/-W open no session."""
    return not no_command and stdio_forward is None and not forwards and not dynamic
