"""Calls usable both ways, as in asyncssh: `x = await f(...)` and `async with f(...) as x`."""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any, Generic, Protocol, TypeVar


class _AsyncCloseable(Protocol):
    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc: object) -> Any: ...


T = TypeVar("T", bound=_AsyncCloseable)


class AwaitableContext(Generic[T]):
    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._value: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._coro.__await__()

    async def __aenter__(self) -> T:
        self._value = await self._coro
        return await self._value.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: object) -> None:
        assert self._value is not None
        await self._value.__aexit__(*exc)
