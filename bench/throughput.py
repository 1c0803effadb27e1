"""Benchmark 2: bulk data through an exec channel (`cat`) and through a local TCP
forward, with the CPU each side spent and a sha256 check of what came out."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    BenchError,
    Lab,
    System,
    read_stdout_line,
    spawn,
    stop_pid,
    tree_cpu_seconds,
    wait_tree_settled,
)
from harness import (
    cpu_seconds as proc_cpu_seconds,
)

CHUNK = 1 << 20
CIPHERS = {"chacha20": "chacha20-poly1305@openssh.com", "aes128-gcm": "aes128-gcm@openssh.com"}


def make_data(tmp: Path, size: int) -> tuple[Path, str]:
    """Random bytes (incompressible, so no layer can shrink them) and their sha256."""
    path = tmp / "payload.bin"
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    return path, h.hexdigest()


# ---------------------------------------------------------------- exec channel


def exec_cat(system: System, data: Path, size: int, digest: str, timeout: float,
             flags: list[str]) -> dict[str, Any]:
    """`client host cat < data`, hashing what comes back. Client CPU is the child's
    rusage; server CPU the server tree's /proc times, read once the session's
    processes are gone (and so counted in the server's cutime/cstime)."""
    # the Go client never sends stdin EOF (PROTOCOL.md §6.4), so a plain cat would
    # never end there; head -c stops after exactly `size` bytes and is cat otherwise
    remote = f"head -c {size}" if system.kind == "ref" else "cat"
    wait_tree_settled(system.server.pid, 0, 5.0)
    server_before = tree_cpu_seconds(system.server.pid)
    err_path = Path(system.env["HOME"]) / "client-stderr.log"
    with open(data, "rb") as stdin, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = spawn(system.client([remote], flags=flags), stdin=stdin,
                                stdout=subprocess.PIPE, stderr=err, env=system.env,
                                start_new_session=True)
    assert proc.stdout is not None
    watchdog = threading.Timer(timeout, lambda: os.kill(proc.pid, signal.SIGKILL))
    watchdog.start()
    h = hashlib.sha256()
    received = 0
    first: float | None = None
    try:
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, CHUNK):
            if first is None:
                first = time.perf_counter()
            h.update(chunk)
            received += len(chunk)
        last = time.perf_counter()
        # wait4 gives the child's own CPU time (what it used, not its wall time)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        end = time.perf_counter()
    finally:
        watchdog.cancel()
        stop_pid(proc, 2.0)
    left = wait_tree_settled(system.server.pid, 0, 10.0)
    server_cpu = tree_cpu_seconds(system.server.pid) - server_before
    return {
        "exit": proc.returncode, "seconds": end - start,
        "data_seconds": (last - first) if first else None,
        "bytes": received, "sha_ok": received == size and h.hexdigest() == digest,
        "client_cpu": usage.ru_utime + usage.ru_stime, "server_cpu": server_cpu,
        "server_leftover_processes": left,
        "stderr": err_path.read_text(errors="replace")[-300:],
    }


# ---------------------------------------------------------------- TCP forward


class Sink:
    """A TCP server on 127.0.0.1 that hashes everything it gets and, at EOF, answers
    `<sha256> <bytes>\\n`: the far end of the forward."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.5)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    @staticmethod
    def _one(conn: socket.socket) -> None:
        h = hashlib.sha256()
        n = 0
        conn.settimeout(600)
        with conn, contextlib.suppress(OSError):
            while chunk := conn.recv(CHUNK):
                h.update(chunk)
                n += len(chunk)
            conn.sendall(f"{h.hexdigest()} {n}\n".encode())

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(2)


def _send_through(port: int, data: Path | None, timeout: float) -> tuple[float, str]:
    """Send a file (or nothing) into the forward's local port; (seconds, reply)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if data is not None:
            with open(data, "rb") as f:
                while block := f.read(CHUNK):
                    s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    return time.perf_counter() - start, reply.decode(errors="replace").strip()


def ssh3_forward_flags(lab: Lab) -> tuple[list[str], list[str]] | None:
    """How our client asks for a local forward, from its own -h, or None if it
    cannot yet. Returns (flags with {lport}/{host}/{rport} placeholders, command)."""
    r = subprocess.run([sys.executable, "-m", "ssh3_client.cli", "-h"],
                       capture_output=True, text=True, env=lab.env, timeout=30)
    text = r.stdout + r.stderr
    no_cmd = ["-N"] if re.search(r"(^|\s)-N\b", text, re.M) else []
    command = [] if no_cmd else ["sleep 3600"]
    if re.search(r"(^|[\s,])-L\b", text, re.M):
        return ["-L", "{lport}:{host}:{rport}", *no_cmd], command
    if "-forward-tcp" in text:
        return ["-forward-tcp", "{lport}/{host}@{rport}", *no_cmd], command
    return None


def forward_run(lab: Lab, system: System, flags_tpl: list[str], command: list[str],
                sink: Sink, data: Path, size: int, digest: str,
                timeout: float) -> dict[str, Any]:
    """Start the client with a local forward to the sink, wait until a probe gets
    through, then time one transfer. CPU: /proc times of the (long-running) client
    and of the server tree, over the transfer only."""
    lport = _free_tcp_port()
    flags = [f.format(lport=lport, host="127.0.0.1", rport=sink.port) for f in flags_tpl]
    log = open(lab.tmp / f"forward-{system.name.replace(' ', '_')}.log", "ab")  # noqa: SIM115
    proc = lab.procs.start(system.client(command, flags=flags), stdin=subprocess.DEVNULL,
                           stdout=log, stderr=log, env=system.env, start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise BenchError(f"the client exited ({proc.returncode}) before the forward "
                                 "was up")
            try:
                _, reply = _send_through(lport, None, 5)
                if reply.endswith(" 0"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("the forward did not come up within 20 s")
            time.sleep(0.1)
        client_before = proc_cpu_seconds(proc.pid)
        server_before = tree_cpu_seconds(system.server.pid)
        seconds, reply = _send_through(lport, data, timeout)
        client_cpu = proc_cpu_seconds(proc.pid) - client_before
        server_cpu = tree_cpu_seconds(system.server.pid) - server_before
        return {"exit": 0, "seconds": seconds, "bytes": size,
                "sha_ok": reply == f"{digest} {size}", "client_cpu": client_cpu,
                "server_cpu": server_cpu}
    finally:
        lab.procs.stop(proc)
        wait_tree_settled(system.server.pid, 0, 5.0)


# ---------------------------------------------------------------- raw QUIC


def raw_quic_run(lab: Lab, system: System, server_port: int, server_pid: int, data: Path,
                 size: int, digest: str, timeout: float) -> dict[str, Any]:
    """One stream of `size` bytes from a bare client of the same QUIC library to a bare
    server (bench/raw_quic.py): the ceiling ssh3's -L is measured against."""
    server_before = proc_cpu_seconds(server_pid)
    with open(lab.tmp / "raw-quic-client.log", "ab") as err:
        proc = spawn([sys.executable, str(BENCH_DIR / "raw_quic.py"), "send", "--backend",
                      str(system.backend), "--port", str(server_port), "--file", str(data),
                      "--timeout", str(timeout)], stdin=subprocess.DEVNULL,
                     stdout=subprocess.PIPE, stderr=err, env=system.env,
                     start_new_session=True)
    watchdog = threading.Timer(timeout, lambda: os.kill(proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        watchdog.cancel()
        stop_pid(proc, 2.0)
    server_cpu = proc_cpu_seconds(server_pid) - server_before
    try:
        res = json.loads(out.decode().strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise BenchError(f"raw_quic send failed (exit {proc.returncode})") from exc
    return {"exit": proc.returncode, "seconds": res["seconds"], "bytes": size,
            "sha_ok": res["reply"] == f"{digest} {size}",
            "client_cpu": usage.ru_utime + usage.ru_stime, "server_cpu": server_cpu}


def start_raw_server(lab: Lab, system: System) -> tuple[subprocess.Popen[Any], int]:
    """bench/raw_quic.py serve with the ssh3 server's own certificate; (process, port)."""
    proc = lab.procs.start(
        [sys.executable, str(BENCH_DIR / "raw_quic.py"), "serve", "--backend",
         str(system.backend), "--cert", str(lab.tmp / f"cert-{system.backend}.pem"),
         "--key", str(lab.tmp / f"key-{system.backend}.pem")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=open(lab.tmp / "raw-quic-server.log", "ab"), env=system.env)  # noqa: SIM115
    m = read_stdout_line(proc, re.compile(r"PORT (\d+)"), 30)
    return proc, int(m.group(1))


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- the benchmark


def bench_throughput(lab: Lab, systems: list[System], size: int, runs: int,
                     say: Callable[[str], None]) -> dict[str, Any]:
    data, digest = make_data(lab.tmp, size)
    timeout = 120 + size / 2e6  # even at 2 MB/s it ends
    rows: list[dict[str, Any]] = []

    def row(mode: str, system: System, label: str, flags: list[str]) -> dict[str, Any]:
        r = {"mode": mode, "system": system.name, "label": label, "flags": flags,
             "runs": [], "note": None}
        rows.append(r)
        return r

    exec_rows: list[tuple[dict[str, Any], System]] = []
    for s in systems:
        if s.kind == "openssh":
            for name, cipher in CIPHERS.items():
                exec_rows.append((row("exec", s, f"OpenSSH {name}", ["-c", cipher]), s))
        else:
            exec_rows.append((row("exec", s, s.name, []), s))
    for i in range(runs):
        for r, s in exec_rows:
            say(f"throughput: exec cat, {r['label']}, run {i + 1}/{runs}")
            try:
                r["runs"].append(exec_cat(s, data, size, digest, timeout, r["flags"]))
            except (OSError, BenchError) as exc:
                r["runs"].append({"exit": None, "error": str(exc)})

    ours = [s for s in systems if s.kind == "ssh3"]
    fwd = ssh3_forward_flags(lab) if ours else None
    sink = Sink()
    try:
        fwd_rows: list[tuple[dict[str, Any], System, list[str], list[str]]] = []
        for s in systems:
            if s.kind == "openssh":
                for name, cipher in CIPHERS.items():
                    fwd_rows.append((row("forward", s, f"OpenSSH {name} -L", ["-c", cipher]),
                                     s, ["-c", cipher, "-N", "-o", "ExitOnForwardFailure=yes",
                                         "-L", "{lport}:{host}:{rport}"], []))
            elif s.kind == "ref":
                fwd_rows.append((row("forward", s, f"{s.name} -forward-tcp", []), s,
                                 ["-forward-tcp", "{lport}/{host}@{rport}"], ["sleep 3600"]))
            elif fwd is None:
                r = row("forward", s, f"{s.name} -L", [])
                r["note"] = "n/a (not implemented)"
            else:
                fwd_rows.append((row("forward", s, f"{s.name} -L", []), s, fwd[0], fwd[1]))
        for i in range(runs):
            for r, s, flags, command in fwd_rows:
                say(f"throughput: forward, {r['label']}, run {i + 1}/{runs}")
                try:
                    r["runs"].append(forward_run(lab, s, flags, command, sink, data, size,
                                                 digest, timeout))
                except (OSError, BenchError) as exc:
                    r["runs"].append({"exit": None, "error": str(exc)})
        # the same bytes over one bare QUIC stream of each library (bench/raw_quic.py)
        for s in ours:
            r = row("raw", s, f"raw {s.backend} stream", [])
            try:
                server, port = start_raw_server(lab, s)
            except (OSError, BenchError) as exc:
                r["note"] = f"n/a ({exc})"[:60]
                continue
            try:
                for i in range(runs):
                    say(f"throughput: {r['label']}, run {i + 1}/{runs}")
                    try:
                        r["runs"].append(raw_quic_run(lab, s, port, server.pid, data, size,
                                                      digest, timeout))
                    except (OSError, BenchError) as exc:
                        r["runs"].append({"exit": None, "error": str(exc)})
            finally:
                lab.procs.stop(server)
    finally:
        sink.close()
        data.unlink(missing_ok=True)
    return {"bytes": size, "runs": runs, "rows": rows}
