"""Receive-side back-pressure for aioquic.

aioquic doubles a stream's receive window whenever the peer has sent half of it,
whether or not the application consumed anything, so a slow reader would buffer
without bound. Here the window is instead credited as the application consumes
bytes (`consume`): at most `window` unconsumed bytes per stream, and the connection
window is what was consumed plus two windows.
"""

from __future__ import annotations

from typing import Any

_STATE = "_ssh3_flow"


class _Flow:
    def __init__(self, window: int) -> None:
        self.window = window
        self.consumed: dict[int, int] = {}
        self.total_consumed = 0


def install(quic: Any, window: int) -> None:
    flow = _Flow(window)
    setattr(quic, _STATE, flow)
    quic._local_max_data.value = max(quic._local_max_data.value, window * 2)
    quic._local_max_data.sent = quic._local_max_data.value

    def write_stream_limits(builder: Any, space: Any, stream: Any) -> None:
        if stream.max_stream_data_local:
            target = flow.consumed.get(stream.stream_id, 0) + flow.window
            # announce only once half a window was consumed, to batch frames
            if target - stream.max_stream_data_local >= flow.window // 2:
                stream.max_stream_data_local = target
        # the library doubles the window when highest*2 > window: hide the offset
        highest = stream.receiver.highest_offset
        stream.receiver.highest_offset = 0
        try:
            type(quic)._write_stream_limits(quic, builder=builder, space=space, stream=stream)
        finally:
            stream.receiver.highest_offset = highest

    def write_connection_limits(builder: Any, space: Any) -> None:
        limit = quic._local_max_data
        target = flow.total_consumed + flow.window * 2
        if target - limit.value >= flow.window:
            limit.value = target
        # keep the library from doubling it on its own: pretend nothing is used
        used = limit.used
        limit.used = 0
        try:
            type(quic)._write_connection_limits(quic, builder=builder, space=space)
        finally:
            limit.used = used

    quic._write_stream_limits = write_stream_limits
    quic._write_connection_limits = write_connection_limits


def consume(quic: Any, stream_id: int, nbytes: int) -> None:
    flow: _Flow | None = getattr(quic, _STATE, None)
    if flow is None:
        return
    flow.consumed[stream_id] = flow.consumed.get(stream_id, 0) + nbytes
    flow.total_consumed += nbytes


def forget(quic: Any, stream_id: int) -> None:
    flow: _Flow | None = getattr(quic, _STATE, None)
    if flow is not None:
        flow.consumed.pop(stream_id, None)
