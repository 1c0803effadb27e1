"""ProcessReader, the stdout/stderr of the library's SSH3ClientProcess, without a
network: what it returns for each read call, decoding, and its buffer limit."""

from __future__ import annotations

import asyncio

import pytest
from e2e_helpers import run_async

from ssh3.client_process import CompletedProcess, ProcessReader


def test_reads_lines_and_exact_sizes_as_bytes():
    async def go() -> list[object]:
        r = ProcessReader(None, "strict")
        r._feed(b"one\ntw")
        got: list[object] = [await r.readline(), await r.read(1)]
        later = asyncio.ensure_future(r.readline())
        await asyncio.sleep(0)
        assert not later.done()  # no newline yet
        r._feed(b"o\nthree")
        got.append(await later)
        got.append(await r.readexactly(3))
        r._feed_eof()
        got += [await r.readline(), await r.read(), r.at_eof()]
        with pytest.raises(asyncio.IncompleteReadError):
            await r.readexactly(1)
        return got

    assert run_async(go()) == [b"one\n", b"t", b"wo\n", b"thr", b"ee", b"", True]


def test_decodes_characters_split_across_messages_and_iterates_lines():
    async def go() -> list[str]:
        r = ProcessReader("utf-8", "strict")
        data = "grüße\nzweite\n".encode()
        r._feed(data[:3])  # "gr" and half of "ü"
        first = await r.read(10)
        r._feed(data[3:])
        r._feed_eof()
        return [first] + [line async for line in r]

    assert run_async(go()) == ["gr", "üße\n", "zweite\n"]


def test_a_full_buffer_stops_the_pump_until_read():
    async def go() -> list[bool]:
        r = ProcessReader(None, "strict", limit=10)
        r._feed(b"x" * 10)
        pump = asyncio.ensure_future(r._wait_room())
        await asyncio.sleep(0)
        blocked = not pump.done()
        await r.read(5)
        await asyncio.sleep(0)
        return [blocked, pump.done()]

    assert run_async(go()) == [True, True]


def test_read_all_and_readline_go_past_the_limit():
    async def go() -> tuple[bytes, bytes]:
        r = ProcessReader(None, "strict", limit=4)

        async def produce() -> None:
            for chunk in (b"abcdef", b"gh\nij", b"klmnop"):
                await r._wait_room()
                r._feed(chunk)
            r._feed_eof()

        producer = asyncio.ensure_future(produce())
        line = await r.readline()
        rest = await r.read()
        await producer
        return line, rest

    assert run_async(go()) == (b"abcdefgh\n", b"ijklmnop")


def test_returncode():
    assert CompletedProcess("x", 3, None, "", "").returncode == 3
    assert CompletedProcess("x", None, "KILL", "", "").returncode == 137
    assert CompletedProcess("x", None, "NOPE", "", "").returncode == 255
    assert CompletedProcess("x", None, None, "", "").returncode == 255
