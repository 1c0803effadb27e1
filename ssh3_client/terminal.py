"""Local terminal and stdio: raw mode, window size, stdin reading, output writing."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import termios
import threading
import tty
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

STDIN_CHUNK = 32768


def write_all(fd: int, data: bytes) -> None:
    """Write every byte, even if the fd was left non-blocking by someone sharing it.
    Output is never dropped: a closed pipe raises (BrokenPipeError) instead."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except InterruptedError:
            continue
        view = view[n:]


def terminal_size(fd: int) -> tuple[int, int] | None:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.columns, size.lines


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Raw mode for the session's duration; the old mode always comes back."""
    try:
        old = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


class StdinReader:
    """Reads stdin in a thread with blocking reads, so the fd (often shared with
    stdout and the user's shell) is never switched to non-blocking mode. At most a
    few chunks are in flight (a semaphore): back-pressure towards the remote side,
    and nothing asyncio-owned is left pending in the thread when the loop ends."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop, depth: int = 8) -> None:
        self.fd = fd
        self._loop = loop
        import asyncio  # here: `ssh3 -G` imports this module without running a loop

        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._slots = threading.Semaphore(depth)
        self._thread = threading.Thread(target=self._run, name="ssh3-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._slots.acquire()
            try:
                data = os.read(self.fd, STDIN_CHUNK)
            except InterruptedError:
                self._slots.release()
                continue
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    self._slots.release()
                    select.select([self.fd], [], [])
                    continue
                data = b""
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, data)
            except RuntimeError:  # the loop is closed: nobody wants more input
                return
            if not data:
                return

    async def read(self) -> bytes:
        """Next chunk; b"" at EOF."""
        data = await self._queue.get()
        self._slots.release()
        return data
