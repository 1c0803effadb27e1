"""Local terminal and stdio: raw mode, window size, stdin reading, output writing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import select
import termios
import threading
import tty
from collections.abc import Iterator

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
    stdout and the user's shell) is never switched to non-blocking mode. Chunks
    go through a small bounded queue: back-pressure towards the remote side."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.fd = fd
        self._loop = loop
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="ssh3-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self.fd, STDIN_CHUNK)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    select.select([self.fd], [], [])
                    continue
                data = b""
            done: concurrent.futures.Future[None] = concurrent.futures.Future()

            def put(chunk: bytes = data, done: concurrent.futures.Future[None] = done) -> None:
                # the coroutine is created in the loop: never left un-awaited
                task = asyncio.ensure_future(self._queue.put(chunk))
                task.add_done_callback(lambda t: done.set_result(None))

            try:
                self._loop.call_soon_threadsafe(put)
                done.result()
            except (RuntimeError, Exception):  # noqa: BLE001 - the loop is gone: stop
                return
            if not data:
                return

    async def read(self) -> bytes:
        """Next chunk; b"" at EOF."""
        return await self._queue.get()
