"""Benchmark 4: server memory with many idle conversations, and new conversations
per second from parallel clients."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harness import (
    BENCH_DIR,
    URL_PATH,
    BenchError,
    Lab,
    System,
    pss_kb,
    read_stdout_line,
    rss_kb,
    run_timed,
    spawn,
    stop_pid,
    tree_cpu_seconds,
    tree_memory_kb,
    wait_tree_settled,
)

SETTLE_SECONDS = 2.0


def server_memory(system: System) -> dict[str, int]:
    """The ssh3 and Go servers are one process (sessions would be children, and idle
    conversations have none): that process's RSS/PSS. sshd is a tree, one listener
    plus two processes per connection: the sums over the tree."""
    if system.kind == "openssh":
        rss, pss, n = tree_memory_kb(system.server.pid)
        return {"rss_kb": rss, "pss_kb": pss, "processes": n}
    pid = system.server.pid
    return {"rss_kb": rss_kb(pid), "pss_kb": pss_kb(pid), "processes": 1}


def _hold_quic(lab: Lab, system: System, count: int, say: Callable[[str], None]
               ) -> dict[str, Any]:
    backend = system.backend or "qh3"  # the Go server: our client library, fast backend
    proc = lab.procs.start(
        [sys.executable, str(BENCH_DIR / "scale_client.py"), "hold", "--port", str(system.port),
         "--path", URL_PATH, "--user", system.user, "--key", str(system.key),
         "--backend", backend, "--count", str(count), "--max-seconds", "600"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=open(lab.tmp / "scale-client.log", "ab"), env=system.env)  # noqa: SIM115
    try:
        m = read_stdout_line(proc, re.compile(r"READY opened=(\d+) failed=(\d+) "
                                              r"seconds=([\d.]+) errors=(.*)"), 600)
        opened, failed = int(m.group(1)), int(m.group(2))
        say(f"scale: {system.name}: {opened} conversations open ({failed} failed) "
            f"in {m.group(3)} s")
        time.sleep(SETTLE_SECONDS)
        during = server_memory(system)
        assert proc.stdin is not None
        proc.stdin.write(b"alive\n")
        proc.stdin.flush()
        alive = int(read_stdout_line(proc, re.compile(r"ALIVE (\d+)"), 30).group(1))
        proc.stdin.write(b"stop\n")
        proc.stdin.flush()
        closing = time.monotonic()
        read_stdout_line(proc, re.compile(r"CLOSED"), 60)
        return {"opened": opened, "failed": failed, "alive_at_reading": alive,
                "open_seconds": float(m.group(3)), "errors": json.loads(m.group(4)),
                "close_seconds": time.monotonic() - closing,
                "during": during, "client": f"1 process, library, backend {backend}"}
    finally:
        lab.procs.stop(proc, 30)


def _hold_openssh(lab: Lab, system: System, count: int, say: Callable[[str], None]
                  ) -> dict[str, Any]:
    """`count` ssh -N processes, each known to be authenticated when its LocalCommand
    (run by ssh after the connection is up) prints UP."""
    procs: list[subprocess.Popen[bytes]] = []
    lock = threading.Lock()
    argv = system.client(flags=["-N", "-o", "PermitLocalCommand=yes",
                                "-o", "LocalCommand=echo UP"])

    def one(_: int) -> bool:
        proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=system.env,
                                start_new_session=True)
        with lock:
            procs.append(proc)
        try:
            read_stdout_line(proc, re.compile("UP"), 60)
            return True
        except BenchError:
            return False

    start = time.monotonic()
    try:
        # sshd throttles unauthenticated connections (MaxStartups): 8 at a time
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(count)))
        opened = sum(results)
        say(f"scale: OpenSSH: {opened} sessions open in {time.monotonic() - start:.1f} s")
        elapsed = time.monotonic() - start
        time.sleep(SETTLE_SECONDS)
        during = server_memory(system)
        alive = sum(1 for p in procs if p.poll() is None)
        return {"opened": opened, "failed": count - opened, "alive_at_reading": alive,
                "open_seconds": elapsed, "errors": [], "during": during,
                "client": f"{count} ssh -N processes"}
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            stop_pid(p, 5.0)


def idle_memory(lab: Lab, system: System, count: int, say: Callable[[str], None]
                ) -> dict[str, Any]:
    # one conversation first, so lazily loaded code is not counted as per-conversation
    run_timed(system.client(["true"]), system.env, 60)
    wait_tree_settled(system.server.pid, 0, 5.0)
    time.sleep(0.5)
    before = server_memory(system)
    if system.quic:
        held = _hold_quic(lab, system, count, say)
    else:
        held = _hold_openssh(lab, system, count, say)
    # conversations end on the client's close; give the server a moment to notice
    wait_tree_settled(system.server.pid, 0, 30.0)
    time.sleep(3.0)
    return {**held, "before": before, "after": server_memory(system)}


def conversation_rate(system: System, workers: int, seconds: float) -> dict[str, Any]:
    """`workers` threads, each running `<client> host true` back to back until the
    time is up (and at most 10000 runs in all)."""
    deadline = time.monotonic() + seconds
    counts = {"ok": 0, "failed": 0, "runs": 0}
    errors: list[str] = []
    durations: list[float] = []
    lock = threading.Lock()
    argv = system.client(["true"])

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                if counts["runs"] >= 10000:
                    return
                counts["runs"] += 1
            code, secs, _, err = run_timed(argv, system.env, 60)
            with lock:
                durations.append(secs)
                if code == 0:
                    counts["ok"] += 1
                else:
                    counts["failed"] += 1
                    if len(errors) < 3:
                        stamp = time.strftime("%H:%M:%S")
                        errors.append(f"{stamp} {err.decode(errors='replace')[-200:]}")

    wait_tree_settled(system.server.pid, 0, 5.0)
    cpu_before = tree_cpu_seconds(system.server.pid)
    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    # the sessions' processes (reaped: in the server's cutime) count as its CPU
    wait_tree_settled(system.server.pid, 0, 10.0)
    server_cpu = tree_cpu_seconds(system.server.pid) - cpu_before
    return {"ok": counts["ok"], "failed": counts["failed"], "seconds": elapsed,
            "server_cpu_ms_per_conv": server_cpu * 1000 / max(1, counts["ok"]),
            "per_second": counts["ok"] / elapsed, "errors": errors,
            "max_run_seconds": max(durations, default=0.0),
            "median_run_seconds": sorted(durations)[len(durations) // 2] if durations else 0.0,
            "client": f"{workers} parallel CLI processes"}


def library_rate(lab: Lab, system: System, tasks: int, seconds: float,
                 max_runs: int | None = None) -> dict[str, Any]:
    """The same through the library from one process: the server's rate without the
    ~0.3 s of Python start-up each CLI run pays."""
    r = subprocess.run(
        [sys.executable, str(BENCH_DIR / "scale_client.py"), "rate", "--port", str(system.port),
         "--path", URL_PATH, "--user", system.user, "--key", str(system.key),
         "--backend", system.backend or "qh3", "--tasks", str(tasks),
         "--seconds", str(seconds), *(["--max-runs", str(max_runs)] if max_runs else [])],
        capture_output=True, text=True, env=system.env, timeout=seconds + 120)
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise BenchError(f"scale_client rate failed: {r.stderr[-300:]}") from exc
    out["per_second"] = out["ok"] / out["seconds"]
    out["client"] = f"1 process, library, {tasks} tasks"
    return out


def churn(lab: Lab, system: System, sessions: int) -> dict[str, Any]:
    """`sessions` short conversations (`true`, library, 4 at a time) one after the
    other: the server's RSS before and after (does a finished conversation leave
    anything behind?) and its CPU per conversation (process tree, the sessions'
    `true` included)."""
    pid = system.server.pid
    wait_tree_settled(pid, 0, 5.0)
    rss_before = rss_kb(pid)
    cpu_before = tree_cpu_seconds(pid)
    res = library_rate(lab, system, 4, 600.0, max_runs=sessions)
    wait_tree_settled(pid, 0, 10.0)
    cpu = tree_cpu_seconds(pid) - cpu_before
    # closing periods end (3 PTOs) and the server drops the connections
    time.sleep(SETTLE_SECONDS)
    return {"sessions": res["ok"], "failed": res["failed"], "seconds": res["seconds"],
            "rss_before_kb": rss_before, "rss_after_kb": rss_kb(pid),
            "server_cpu_ms_per_conv": cpu * 1000 / max(1, res["ok"]),
            "errors": res.get("errors", [])}


def bench_scale(lab: Lab, systems: list[System], count: int, seconds: float,
                say: Callable[[str], None], churn_sessions: int = 1000) -> dict[str, Any]:
    out: dict[str, Any] = {"count": count, "seconds": seconds, "churn": churn_sessions,
                           "systems": {}}
    for s in systems:
        rec: dict[str, Any] = {}
        out["systems"][s.name] = rec
        say(f"scale: {s.name}: {count} idle conversations")
        try:
            rec["idle"] = idle_memory(lab, s, count, say)
        except (OSError, BenchError) as exc:
            rec["idle"] = {"error": str(exc)}
        say(f"scale: {s.name}: new conversations for {seconds:g} s, 4 parallel clients")
        rec["rate_cli"] = conversation_rate(s, 4, seconds)
        if s.kind == "ssh3":
            try:
                rec["rate_library"] = library_rate(lab, s, 4, seconds)
            except (OSError, BenchError, subprocess.TimeoutExpired) as exc:
                rec["rate_library"] = {"error": str(exc)}
            say(f"scale: {s.name}: {churn_sessions} short conversations, RSS and CPU")
            try:
                rec["churn"] = churn(lab, s, churn_sessions)
            except (OSError, BenchError, subprocess.TimeoutExpired) as exc:
                rec["churn"] = {"error": str(exc)}
        wait_tree_settled(s.server.pid, 0, 10.0)
    return out
