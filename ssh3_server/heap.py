"""Give freed heap back to the system after conversations end (glibc malloc_trim).

A conversation's objects are freed when it ends, but glibc keeps the freed memory in
its arenas (and Python's small-object allocator releases whole arenas only), so the
server's RSS stays at its high-water mark: 500 idle conversations opened and closed
left ~25 MB behind. `malloc_trim(0)` returns free pages at the top of the heap and
inside it (madvise), measured in docs/throughput.md. It costs about a millisecond
on a busy heap, so it runs at most once per `DELAY` seconds, after ends settle.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from typing import Any

log = logging.getLogger("ssh3.server.heap")

DELAY = 2.0


def _load_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    """`schedule()` when something big was freed; one trim follows, DELAY s later."""

    def __init__(self) -> None:
        self._trim = _load_trim()
        self._handle: asyncio.TimerHandle | None = None

    def schedule(self) -> None:
        if self._trim is None or self._handle is not None:
            return
        self._handle = asyncio.get_running_loop().call_later(DELAY, self._run)

    def _run(self) -> None:
        self._handle = None
        # a conversation's objects form cycles (protocol <-> connection <-> channels):
        # only the cyclic collector frees them, and its oldest generation runs rarely
        gc.collect()
        self._trim(0)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
