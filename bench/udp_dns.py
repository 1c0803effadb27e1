"""Benchmark 5: DNS queries per second through `-forward-udp`, per QUIC backend, and
straight to the DNS server for comparison.

The bench starts dnsmasq on 127.0.0.1 (answers every *.bench.test with 10.1.2.3),
then for each ssh3 system a client with `-forward-udp LPORT/127.0.0.1@DNSPORT -N`.
One UDP socket sends N queries (distinct names and IDs) with at most `inflight`
unanswered; every answer is checked (ID, question, address). A silence of 2 s counts
what is still in flight as lost and goes on. OpenSSH cannot forward UDP: no row.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import HOST, BenchError, Lab, System, free_port

ANSWER = "10.1.2.3"
SILENCE = 2.0


def _dns() -> Any:
    try:
        import dns.message
        import dns.rdatatype
    except ImportError as exc:  # pragma: no cover - in the test extra
        raise BenchError("dnspython missing: pip install dnspython") from exc
    return dns


def _free_dns_port() -> int:
    """dnsmasq binds the port for UDP and TCP, and cannot take port 0."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        return port
    raise BenchError("no free port for dnsmasq")


def start_dnsmasq(lab: Lab) -> tuple[subprocess.Popen[Any], int]:
    program = shutil.which("dnsmasq") or (
        "/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
    if program is None:
        raise BenchError("dnsmasq missing: apt-get install -y dnsmasq")
    port = _free_dns_port()
    _, log = lab.log("dnsmasq")
    proc = lab.procs.start(
        [program, "--no-daemon", f"--port={port}", f"--listen-address={HOST}",
         "--bind-interfaces", "--no-resolv", "--no-hosts", "--cache-size=10000",
         f"--address=/bench.test/{ANSWER}", "--pid-file=", "--log-facility=-",
         # as root it would switch to "nobody"; stay who we are
         *(["--user=root"] if os.geteuid() == 0 else [])],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    if not _wait_answering(port, proc, 15):
        lab.procs.stop(proc)
        raise BenchError("dnsmasq did not answer within 15 s")
    return proc, port


def _wait_answering(port: int, proc: subprocess.Popen[Any], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError, BenchError):
            if run_queries(port, 1, 1, silence=0.3, warm_tries=1)["ok"] == 1:
                return True
        time.sleep(0.1)
    return False


def run_queries(port: int, count: int, inflight: int, silence: float = SILENCE,
                max_seconds: float = 120.0, warm_tries: int = 10) -> dict[str, Any]:
    """`count` A queries to 127.0.0.1:port over one socket, `inflight` at a time."""
    dns = _dns()
    count = min(count, 60000)  # one ID each
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((HOST, port))
    sock.setblocking(False)
    # a forward opens its UDP channel on a source address's first datagram and drops
    # what comes before the channel is up: one answered query first, same socket
    warm = dns.message.make_query("warm.bench.test", dns.rdatatype.A)
    warm.id = 65535
    for _ in range(warm_tries):
        sock.send(warm.to_wire())
        if select.select([sock], [], [], min(1.0, silence))[0]:
            sock.recv(4096)
            break
    pending: dict[int, tuple[Any, float]] = {}
    ok = bad = lost = sent = 0
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + max_seconds
    try:
        while (sent < count or pending) and time.perf_counter() < deadline:
            while sent < count and len(pending) < inflight:
                q = dns.message.make_query(f"q{sent}.bench.test", dns.rdatatype.A)
                q.id = sent
                sock.send(q.to_wire())
                pending[q.id] = (q, time.perf_counter())
                sent += 1
            ready, _, _ = select.select([sock], [], [], silence)
            if not ready:
                lost += len(pending)
                pending.clear()
                continue
            while True:
                try:
                    wire = sock.recv(4096)
                except BlockingIOError:
                    break
                try:
                    r = dns.message.from_wire(wire)
                except Exception:  # noqa: BLE001 - a garbled answer counts as bad
                    bad += 1
                    continue
                entry = pending.pop(r.id, None)
                if entry is None:
                    continue  # a late answer to a query already counted lost
                q, t = entry
                latencies.append(time.perf_counter() - t)
                good = (q.is_response(r) and r.answer
                        and r.answer[0][0].address == ANSWER)
                ok += 1 if good else 0
                bad += 0 if good else 1
    finally:
        sock.close()
    seconds = time.perf_counter() - start
    latencies.sort()
    return {"sent": sent, "ok": ok, "bad": bad, "lost": lost + len(pending),
            "seconds": seconds, "per_second": ok / seconds if seconds else 0.0,
            "median_ms": latencies[len(latencies) // 2] * 1000 if latencies else None}


def forward_queries(lab: Lab, system: System, dns_port: int, count: int, inflight: int,
                    runs: int) -> dict[str, Any]:
    lport = _free_dns_port()
    log = open(lab.tmp / f"udp-{system.name.replace(' ', '_')}.log", "ab")  # noqa: SIM115
    proc = lab.procs.start(
        system.client([], flags=["-forward-udp", f"{lport}/{HOST}@{dns_port}", "-N"]),
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=system.env,
        start_new_session=True)
    log.close()
    try:
        if not _wait_answering(lport, proc, 20):
            raise BenchError("the UDP forward did not answer within 20 s")
        return {"runs": [run_queries(lport, count, inflight) for _ in range(runs)]}
    finally:
        lab.procs.stop(proc)


def bench_udp(lab: Lab, systems: list[System], count: int, inflight: int, runs: int,
              say: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {"count": count, "inflight": inflight, "systems": {}}
    dnsmasq, port = start_dnsmasq(lab)
    try:
        say(f"udp: {count} queries straight to dnsmasq")
        out["systems"]["direct (no forward)"] = {
            "runs": [run_queries(port, count, inflight) for _ in range(runs)]}
        for s in systems:
            if s.kind != "ssh3":
                continue  # OpenSSH cannot forward UDP; the Go client's flag differs
            say(f"udp: {count} queries through {s.name} -forward-udp")
            try:
                out["systems"][s.name] = forward_queries(lab, s, port, count, inflight, runs)
            except (OSError, BenchError) as exc:
                out["systems"][s.name] = {"error": str(exc)}
    finally:
        lab.procs.stop(dnsmasq)
    return out
