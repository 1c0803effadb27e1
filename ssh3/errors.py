"""Exception types shared by the SSH3 wire layer and everything above it."""

from __future__ import annotations


class SSH3Error(Exception):
    """Base class for every SSH3 error this package raises on purpose."""


class ProtocolError(SSH3Error):
    """The peer sent something malformed, oversized or unknown.

    The message names the offending value (for example "unknown message type 93") so
    that it can be logged as is. `messages` holds whatever complete messages an
    incremental parser decoded in the same call before hitting the error; without it
    they would be lost with the exception (e.g. an exit-status just before garbage).
    """

    def __init__(self, message: str, *, messages: list[object] | None = None) -> None:
        super().__init__(message)
        self.messages: list[object] = messages if messages is not None else []


class NeedMore(Exception):
    """Internal: the input ends before the item being read is complete.

    `needed` is the total input length (an index into the reader's buffer) that the
    failed read would need before retrying can possibly succeed, or 0 if unknown.
    Parsers use it to avoid re-parsing a large message on every small chunk.
    """

    def __init__(self, needed: int = 0) -> None:
        super().__init__(needed)
        self.needed = needed
