"""Many SSH3 conversations from one Python process, through the library
(`ssh3.aio.client.open_connection` + `establish`), for the scale benchmark.

    python bench/scale_client.py hold --port P --user U --key K --backend B --count 500
    python bench/scale_client.py rate --port P --user U --key K --backend B --tasks 4 \
                                      --seconds 20

hold: open `count` QUIC connections with one conversation each (at most
`--concurrency` handshakes at a time), then print `READY opened=N failed=F`. After that,
a line `alive` on stdin prints `ALIVE n` (conversations still up), and `stop` (or EOF)
closes them all, prints `CLOSED` and exits. Idle connections are kept up with a QUIC
PING every 10 s (the server's idle timeout is 30 s). Stops by itself after
--max-seconds.

rate: `tasks` loops, each connecting, authenticating, running `true` on a session
channel and closing, for `seconds` (or `--max-runs` conversations in all); prints
one JSON line with the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from typing import Any

from ssh3.aio.client import (
    ConnectParams,
    establish,
    open_connection,
    private_key_identity,
    wait_settings,
)
from ssh3.auth.keys import load_private_key
from ssh3.connection import EXT_CHANNEL_EOF
from ssh3.messages import ExecRequest, ExitStatusRequest

KEEPALIVE_SECONDS = 10.0


def params_from(args: argparse.Namespace) -> ConnectParams:
    key = load_private_key(args.key)
    return ConnectParams(host=args.host, port=args.port, path=args.path, user=args.user,
                         identities=[private_key_identity(args.key, key)],
                         backend=args.backend, insecure=True, connect_timeout=30.0,
                         idle_timeout=60.0)


async def hold(args: argparse.Namespace) -> int:
    params = params_from(args)
    sem = asyncio.Semaphore(args.concurrency)
    stop = asyncio.Event()
    conversations: list[Any] = []
    counts = {"opened": 0, "failed": 0}
    errors: list[str] = []

    async def one() -> None:
        await sem.acquire()
        held = True
        try:
            async with open_connection(params) as protocol:
                conv = await establish(protocol, params)
                conversations.append(conv)
                counts["opened"] += 1
                sem.release()
                held = False
                while not stop.is_set() and not conv.ended.is_set():
                    try:
                        await asyncio.wait_for(stop.wait(), KEEPALIVE_SECONDS)
                    except TimeoutError:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(protocol.ping(), 5.0)
                conv.close()
        except Exception as exc:  # noqa: BLE001 - counted and reported, never fatal
            counts["failed"] += 1
            if len(errors) < 5:
                errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if held:
                sem.release()

    start = time.monotonic()
    tasks = [asyncio.ensure_future(one()) for _ in range(args.count)]
    while counts["opened"] + counts["failed"] < args.count:
        if time.monotonic() - start > args.max_seconds:
            break
        await asyncio.sleep(0.1)
    print(f"READY opened={counts['opened']} failed={counts['failed']} "
          f"seconds={time.monotonic() - start:.1f} errors={json.dumps(errors)}", flush=True)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    deadline = start + args.max_seconds
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(),
                                          max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        if line.strip() == b"alive":
            alive = sum(1 for c in conversations if not c.ended.is_set())
            print(f"ALIVE {alive}", flush=True)
            continue
        break  # "stop" or EOF
    stop.set()
    await asyncio.wait(tasks, timeout=30)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print("CLOSED", flush=True)
    return 0


async def exec_true(params: ConnectParams) -> None:
    async with open_connection(params) as protocol:
        conv = await establish(protocol, params)
        await wait_settings(protocol)
        channel = conv.open_channel("session")
        channel.send(ExecRequest(b"true", want_reply=True))
        if conv.peer_extensions & EXT_CHANNEL_EOF:
            channel.send_eof()  # no stdin
        while True:
            msg = await asyncio.wait_for(channel.read(), 30)
            if msg is None:
                raise RuntimeError("session ended without an exit status")
            if isinstance(msg, ExitStatusRequest):
                if msg.exit_status != 0:
                    raise RuntimeError(f"exit status {msg.exit_status}")
                conv.close()
                return


async def rate(args: argparse.Namespace) -> int:
    params = params_from(args)
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    start = time.monotonic()
    deadline = start + args.seconds

    async def loop_one() -> None:
        # bounded in time and in count
        for _ in range(100000):
            if time.monotonic() >= deadline or counts["ok"] + counts["failed"] >= args.max_runs:
                return
            try:
                await asyncio.wait_for(exec_true(params), 60)
                counts["ok"] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                counts["failed"] += 1
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(loop_one() for _ in range(args.tasks)))
    elapsed = time.monotonic() - start
    print(json.dumps({**counts, "seconds": elapsed, "errors": errors}), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("hold", "rate"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/bench")
    ap.add_argument("--user", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--backend", default="qh3")
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-seconds", type=float, default=900.0)
    ap.add_argument("--max-runs", type=int, default=10**9, help="rate: stop after this many")
    args = ap.parse_args()
    if not args.host.startswith("127."):
        print("scale_client: loopback targets only", file=sys.stderr)
        return 2
    # one UDP socket per connection: lift the descriptor limit as far as allowed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return asyncio.run(hold(args) if args.mode == "hold" else rate(args))


if __name__ == "__main__":
    sys.exit(main())
