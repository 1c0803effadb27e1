"""Benchmarks 1 and 3: session setup time at emulated RTTs, and interactive echo latency
through a pty."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness import (
    BENCH_DIR,
    BenchError,
    Lab,
    System,
    read_stdout_line,
    run_timed,
    spawn,
    stop_pid,
    wait_tree_settled,
)

# ---------------------------------------------------------------- delay on the path


@dataclass
class DelayedPath:
    port: int  # where the client connects
    method: str  # how the delay is made, for the table header
    proc: subprocess.Popen[Any] | None = None


def open_path(lab: Lab, system: System, rtt_ms: float, queue_num: int,
              max_seconds: float) -> DelayedPath:
    """A path to `system` with `rtt_ms` of round-trip time: direct at 0; through the UDP
    relay for QUIC; NFQUEUE (or, failing that, the user-space relay) for TCP."""
    if rtt_ms <= 0:
        return DelayedPath(system.port, "none")
    half = f"{rtt_ms / 2:g}"
    log = open(lab.tmp / f"delay-{system.kind}-{rtt_ms:g}.log", "ab")  # noqa: SIM115
    try:
        if system.quic:
            proc = lab.procs.start(
                [sys.executable, str(BENCH_DIR / "udp_relay.py"), "--target",
                 f"127.0.0.1:{system.port}", "--delay-ms", half,
                 "--max-seconds", str(max_seconds)],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
            m = read_stdout_line(proc, re.compile(r"port (\d+)"), 15)
            return DelayedPath(int(m.group(1)), "user-space UDP relay", proc)
        if not lab.extra.get("no_nfqueue"):
            proc = lab.procs.start(
                [sys.executable, str(BENCH_DIR / "tcp_delay.py"), "nfqueue", "--port",
                 str(system.port), "--queue-num", str(queue_num), "--delay-ms", half,
                 "--max-seconds", str(max_seconds)],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
            try:
                read_stdout_line(proc, re.compile(r"nfqueue ready"), 15)
                return DelayedPath(system.port, "NFQUEUE packet delay (kernel TCP)", proc)
            except BenchError:
                lab.procs.stop(proc)
                log.flush()
                reason = (lab.tmp / f"delay-{system.kind}-{rtt_ms:g}.log").read_text(
                    errors="replace").strip().splitlines()[-1:] or ["unknown"]
                # remember why, and do not try again for the next RTT
                lab.extra["no_nfqueue"] = reason[0]
        proc = lab.procs.start(
            [sys.executable, str(BENCH_DIR / "tcp_delay.py"), "relay", "--target",
             f"127.0.0.1:{system.port}", "--delay-ms", half, "--max-seconds", str(max_seconds)],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        m = read_stdout_line(proc, re.compile(r"port (\d+)"), 15)
        return DelayedPath(int(m.group(1)), "user-space TCP relay (per-chunk delay; TCP ACKs "
                     "not delayed)", proc)
    finally:
        log.close()


def bench_setup(lab: Lab, systems: list[System], rtts: list[float], runs: int,
                say: Callable[[str], None]) -> dict[str, Any]:
    """Wall time of `<client> host true`, per system and RTT; runs are interleaved
    across systems so that a slow spell of the machine hits them all alike."""
    out: dict[str, Any] = {"rtts_ms": rtts, "runs": runs, "systems": {}, "methods": {}}
    for s in systems:
        out["systems"][s.name] = {str(r): {"samples": [], "failures": 0, "errors": []}
                                  for r in rtts}
    for i, rtt in enumerate(rtts):
        paths: dict[str, DelayedPath] = {}
        try:
            for s in systems:
                try:
                    paths[s.name] = open_path(lab, s, rtt, 40 + i, 60 + runs * 30)
                    out["methods"][s.kind] = paths[s.name].method if rtt else \
                        out["methods"].get(s.kind, "none")
                except BenchError as exc:
                    out["systems"][s.name][str(rtt)]["errors"].append(str(exc))
            say(f"setup: RTT {rtt:g} ms, {runs} runs x {len(paths)} systems")
            for warm in (True, False):
                for _ in range(1 if warm else runs):
                    for s in systems:
                        if s.name not in paths:
                            continue
                        code, secs, _, err = run_timed(
                            s.client(["true"], port=paths[s.name].port), s.env, 60)
                        rec = out["systems"][s.name][str(rtt)]
                        if code != 0:
                            rec["failures"] += 1
                            if len(rec["errors"]) < 3:
                                rec["errors"].append(err.decode(errors="replace")[-200:])
                        elif not warm:
                            rec["samples"].append(secs)
        finally:
            for p in paths.values():
                if p.proc is not None:
                    lab.procs.stop(p.proc)
    if "no_nfqueue" in lab.extra:
        out["nfqueue_unavailable"] = lab.extra["no_nfqueue"]
    return out


# ---------------------------------------------------------------- interactive echo


def _spawn_on_pty(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[Any], int]:
    """The client on a new pty that is its controlling terminal, as in a real terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    # raw on our side too, so a byte goes to the client at once and nothing is echoed
    tty.setraw(slave)

    def make_controlling() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = spawn(argv, stdin=slave, stdout=slave, stderr=slave,
                            env={**env, "TERM": "xterm"}, start_new_session=True,
                            preexec_fn=make_controlling)  # noqa: PLW1509 - no threads here
    os.close(slave)
    return proc, master


def _read_until(fd: int, want: bytes, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while want not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"waited {timeout:g} s for {want!r}; got {buf[-200:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                raise BenchError(f"the client's terminal closed; got {buf[-200:]!r}")
            buf += chunk
    return buf


def echo_latency(system: System, rounds: int, warmup: int = 20,
                 cleanup_wait: float = 5.0) -> dict[str, Any]:
    """One byte typed, the same byte back from a remote `cat` in raw mode, `rounds`
    times; each round starts when the previous byte came back. Then the terminal
    "closes" (SIGHUP to the client, as when its window goes away), and we time how
    long the server keeps the session's processes (up to `cleanup_wait` s)."""
    flags = ["-tt"] if system.kind == "openssh" else ["-t"]
    remote = "stty raw -echo; echo READY; exec cat"
    proc, master = _spawn_on_pty(system.client([remote], flags=flags), system.env)
    samples: list[float] = []
    failure = None
    try:
        _read_until(master, b"READY", 30)
        time.sleep(0.3)  # let the rest of the banner line arrive, then drop it
        with contextlib.suppress(OSError):
            while select.select([master], [], [], 0.05)[0]:
                if not os.read(master, 4096):
                    break
        letters = b"abcdefghijklmnopqrstuvwxyz"
        for i in range(warmup + rounds):
            byte = letters[i % 26:i % 26 + 1]
            start = time.perf_counter()
            os.write(master, byte)
            got = _read_until(master, byte, 5)
            elapsed = time.perf_counter() - start
            if got != byte:
                failure = f"round {i}: sent {byte!r}, got {got!r}"
                break
            if i >= warmup:
                samples.append(elapsed)
    except BenchError as exc:
        failure = str(exc)
    finally:
        # raw mode: ^D cannot end the remote cat; stop the client like a closed window
        stop_pid(proc, 3.0, signal.SIGHUP)
        hung_up = time.monotonic()
        os.close(master)
        left = wait_tree_settled(system.server.pid, 0, cleanup_wait)
        cleanup = time.monotonic() - hung_up if left == 0 else None
    return {"samples": samples, "failure": failure, "server_leftover_processes": left,
            "cleanup_seconds": cleanup, "cleanup_wait": cleanup_wait}
