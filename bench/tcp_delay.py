"""Fixed one-way delay for the TCP connections of a loopback port (OpenSSH's side of
the latency benchmark). Two ways, the first preferred:

    python bench/tcp_delay.py nfqueue --port 2222 --delay-ms 25 [--queue-num 7]
    python bench/tcp_delay.py relay --target 127.0.0.1:2222 --delay-ms 25

nfqueue: packet level. iptables rules in the mangle table's OUTPUT chain send every
loopback TCP packet to or from the port to an NFQUEUE; this process holds each one
for the delay and then accepts it, in arrival order. TCP's handshake, ACKs and
windows then see the real delay, as with netem (which this kernel lacks). Needs root,
iptables, the kernel's nfnetlink_queue and the `netfilterqueue` Python package. The
rules carry the comment `ssh3-bench-<pid>`, use --queue-bypass (if this process dies,
packets pass undelayed instead of being dropped), and are removed on exit.
Prints `tcp_delay: nfqueue ready` on stdout once the queue is bound.

relay: user space. Listens on a new port and forwards each connection to the target,
delivering every chunk it read the delay later. Only the data is delayed: the TCP
handshake and ACKs on each side of the relay happen at loopback speed, so it is an
approximation (connect() returns at once, for example). Prints
`tcp_delay: listening on 127.0.0.1 port N`.

Both stop by themselves after --max-seconds, and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

RULE_TAG = "ssh3-bench-"


# ---------------------------------------------------------------- iptables rules


def _rules(port: int, queue_num: int, tag: str) -> list[list[str]]:
    common = ["-o", "lo", "-p", "tcp"]
    target = ["-m", "comment", "--comment", tag,
              "-j", "NFQUEUE", "--queue-num", str(queue_num), "--queue-bypass"]
    return [common + ["--dport", str(port)] + target,
            common + ["--sport", str(port)] + target]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", "5", "-t", "mangle", *args],
                          capture_output=True, text=True, timeout=30)


def remove_tagged_rules(tag: str = RULE_TAG) -> int:
    """Delete every mangle rule whose comment starts with `tag`; returns how many."""
    if shutil.which("iptables") is None:
        return 0
    listing = _iptables("-S")
    removed = 0
    for line in listing.stdout.splitlines():
        if tag in line and line.startswith("-A "):
            parts = line.split()
            # `-S` prints the comment quoted only when it has spaces; ours has none
            r = _iptables("-D", *parts[1:])
            removed += r.returncode == 0
    return removed


# ---------------------------------------------------------------- NFQUEUE


def run_nfqueue(port: int, delay: float, queue_num: int, max_seconds: float) -> int:
    try:
        from netfilterqueue import COPY_META, NetfilterQueue
    except ImportError as exc:
        print(f"tcp_delay: netfilterqueue is not installed: {exc}", file=sys.stderr)
        return 3
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        print("tcp_delay: nfqueue needs root and iptables", file=sys.stderr)
        return 3
    # <bench pid>-<own pid>: the bench that started us removes what we leave behind
    # (killed hard), and only that: another bench may be running beside it
    tag = f"{RULE_TAG}{os.getppid()}-{os.getpid()}"
    nfq = NetfilterQueue()
    held: collections.deque[tuple[float, object]] = collections.deque()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        timer: list[asyncio.TimerHandle | None] = [None]

        def release() -> None:
            timer[0] = None
            now = loop.time() + 0.0002
            while held and held[0][0] <= now:
                held.popleft()[1].accept()  # type: ignore[attr-defined]
            if held:
                timer[0] = loop.call_at(held[0][0], release)

        def on_packet(pkt: object) -> None:
            # the verdict may be given after the callback returns (by packet id)
            held.append((loop.time() + delay, pkt))
            if timer[0] is None:
                timer[0] = loop.call_at(held[0][0], release)

        # COPY_META: the payload never needs to reach user space
        nfq.bind(queue_num, on_packet, mode=COPY_META)
        fd = nfq.get_fd()
        loop.add_reader(fd, lambda: nfq.run(block=False))
        for rule in _rules(port, queue_num, tag):
            r = _iptables("-I", "OUTPUT", *rule)
            if r.returncode != 0:
                print(f"tcp_delay: iptables failed: {r.stderr.strip()}", file=sys.stderr)
                return 3
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print("tcp_delay: nfqueue ready", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_seconds)
        # rules first, so nothing new is queued; then let the held packets go
        remove_tagged_rules(tag)
        loop.remove_reader(fd)
        nfq.run(block=False)
        while held:
            held.popleft()[1].accept()  # type: ignore[attr-defined]
        return 0

    try:
        return asyncio.run(main())
    except OSError as exc:
        print(f"tcp_delay: cannot use NFQUEUE: {exc}", file=sys.stderr)
        return 3
    finally:
        remove_tagged_rules(tag)
        with contextlib.suppress(Exception):
            nfq.unbind()


# ---------------------------------------------------------------- user-space relay

MAX_CHUNKS_QUEUED = 256  # per direction; the reader waits beyond (back-pressure)
MAX_CONNECTIONS = 2048


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_CHUNKS_QUEUED)
    loop = asyncio.get_running_loop()

    async def pull() -> None:
        while True:
            data = await reader.read(1 << 16)
            await queue.put((loop.time() + delay, data))
            if not data:
                return

    async def push() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(pull(), push())
    except (OSError, asyncio.IncompleteReadError):
        writer.close()


async def _relay(target: tuple[str, int], delay: float, max_seconds: float) -> int:
    loop = asyncio.get_running_loop()
    active: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(active) >= MAX_CONNECTIONS:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer, delay),
                                 _pipe(up_reader, writer, delay))
        finally:
            writer.close()
            up_writer.close()

    def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = loop.create_task(handle(reader, writer))
        active.add(task)
        task.add_done_callback(active.discard)

    server = await asyncio.start_server(track, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"tcp_delay: listening on 127.0.0.1 port {port}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    deadline = time.monotonic() + max_seconds
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, deadline - time.monotonic()))
    server.close()
    for task in list(active):
        task.cancel()
    await asyncio.gather(*active, return_exceptions=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    nq = sub.add_parser("nfqueue")
    nq.add_argument("--port", type=int, required=True)
    nq.add_argument("--queue-num", type=int, default=7)
    rl = sub.add_parser("relay")
    rl.add_argument("--target", required=True, help="127.0.0.1:PORT")
    for p in (nq, rl):
        p.add_argument("--delay-ms", type=float, required=True, help="one-way delay (RTT/2)")
        p.add_argument("--max-seconds", type=float, default=900.0)
    args = ap.parse_args()
    if args.mode == "nfqueue":
        return run_nfqueue(args.port, args.delay_ms / 1000.0, args.queue_num,
                           args.max_seconds)
    host, _, port = args.target.rpartition(":")
    if not host.startswith("127."):
        print("tcp_delay: the target must be a loopback address", file=sys.stderr)
        return 2
    return asyncio.run(_relay((host, int(port)), args.delay_ms / 1000.0, args.max_seconds))


if __name__ == "__main__":
    sys.exit(main())
