"""The event loop a long-running program runs on: uvloop when it is installed
(`pip install 'ssh3[uvloop]'`), asyncio's own otherwise, or when
$SSH3_NO_UVLOOP is set (for comparisons: docs/throughput.md)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_name() -> str:
    """'uvloop' or 'asyncio': what `run` will use."""
    return "asyncio" if _loop_factory() is None else "uvloop"


def _loop_factory() -> Any:
    if os.environ.get("SSH3_NO_UVLOOP"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop when available."""
    factory = _loop_factory()
    if factory is None:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
