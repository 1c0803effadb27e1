"""Client keep-alive: QUIC PINGs while the client runs.

`-o ServerAliveInterval=N` (and `ServerAliveCountMax`, default 3), as in OpenSSH:
a PING every N seconds; when CountMax PINGs in a row get no acknowledgement, the
client gives up with OpenSSH's message and exit status 255.

Without ServerAliveInterval a PING still goes out every DEFAULT_INTERVAL seconds,
with no liveness check: the QUIC idle timeout (30 s) must not end a quiet
interactive session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("ssh3.client.keepalive")

DEFAULT_INTERVAL = 15.0
DEFAULT_COUNT_MAX = 3
EXIT_TIMEOUT = 255


class KeepaliveError(Exception):
    """A bad ServerAliveInterval / ServerAliveCountMax value."""


def settings(options: dict[str, str]) -> tuple[float, int]:
    """(interval, count_max) from `-o`/config options; interval 0: the server's
    liveness is not checked (only the default PINGs go out)."""
    interval = _option(options, "ServerAliveInterval", float, 0.0, 0.0)
    count_max = _option(options, "ServerAliveCountMax", int, DEFAULT_COUNT_MAX, 1)
    return interval, count_max


def _option(options: dict[str, str], name: str, convert: Any, default: Any,
            minimum: Any) -> Any:
    """One numeric option (keys are lower case): *default* when unset, KeepaliveError
    when it is not a number of that kind or below *minimum*."""
    text = options.get(name.lower(), "").strip()
    if not text:
        return default
    try:
        value = convert(text)
    except ValueError:
        raise KeepaliveError(f"bad {name} {text!r}") from None
    if value < minimum:
        raise KeepaliveError(f"bad {name} {text!r}")
    return value


class _ServerTimeout(Exception):
    pass


async def _monitor(protocol: Any, interval: float, count_max: int | None) -> None:
    """PING every `interval` s; raise _ServerTimeout once `count_max` PINGs in a
    row went unacknowledged (never when count_max is None)."""
    pending: asyncio.Future[None] | None = None
    missed = 0
    try:
        while not protocol.terminated.is_set():
            await asyncio.sleep(interval)
            if count_max is not None:
                if pending is not None and not pending.done():
                    missed += 1
                    log.debug("keep-alive: PING %d unanswered", missed)
                    if missed >= count_max:
                        raise _ServerTimeout
                else:
                    missed = 0
            try:
                ping = protocol.ping()
            except Exception:  # noqa: BLE001 - the connection is closing
                return
            if pending is not None and not pending.done():
                pending.cancel()  # only the latest one is watched
            pending = asyncio.ensure_future(ping)
            pending.add_done_callback(_ignore_result)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()


def _ignore_result(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


async def run_with_keepalive(protocol: Any, work: Awaitable[int], options: dict[str, str],
                             host: str, default_interval: float = DEFAULT_INTERVAL) -> int:
    """Run `work` (the session, -N or -W) while PINGs go out; its result, or 255
    when the server stopped answering (the work is cancelled then)."""
    interval, count_max = settings(options)
    checked: int | None = count_max
    if interval <= 0:
        interval, checked = default_interval, None
    main = asyncio.ensure_future(work)
    monitor = asyncio.ensure_future(_monitor(protocol, interval, checked))
    try:
        await asyncio.wait({main, monitor}, return_when=asyncio.FIRST_COMPLETED)
        if main.done():
            return main.result()
        exc = monitor.exception()
        if not isinstance(exc, _ServerTimeout):
            if exc is not None:
                log.debug("keep-alive stopped: %r", exc)
            return await main
        with contextlib.suppress(OSError):
            sys.stderr.write(f"ssh3: Timeout, server {host} not responding.\n")
            sys.stderr.flush()
        main.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(main), 2.0)
        return EXIT_TIMEOUT
    finally:
        for task in (main, monitor):
            if not task.done():
                task.cancel()
        await asyncio.gather(main, monitor, return_exceptions=True)
