"""Output reliability: N serial and N parallel `ssh3 host 'echo hello'` runs against a
fresh ssh3-server on 127.0.0.1; every run must print exactly "hello".

    python bench/reliability.py [--serial 1000] [--parallel 400] [--workers 4]
                                [--backend aioquic|qh3]

Prints a table (runs, lost or wrong outputs, failures, median wall time per run).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor


def start_server(tmp: str, backend: str) -> tuple[subprocess.Popen[bytes], int]:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{tmp}/id"],
                   check=True)
    shutil.copy(f"{tmp}/id.pub", f"{tmp}/authorized_keys")
    proc = subprocess.Popen(
        ["ssh3-server", "-bind", "127.0.0.1:0", "-url-path", "/bench",
         "-generate-selfsigned-cert", "-cert", f"{tmp}/cert.pem", "-key", f"{tmp}/key.pem",
         "-authorized-keys-file", f"{tmp}/authorized_keys", "-quic-backend", backend],
        stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        m = re.search(r"listening on \S+ port (\d+)", line)
        if m and line.startswith("ssh3-server:"):
            return proc, int(m.group(1))
    proc.kill()
    raise SystemExit("server did not start")


def one_run(cmd: list[str]) -> tuple[bool, bool, float]:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    return r.returncode == 0, r.stdout == b"hello\n", time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serial", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=400)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--backend", default="aioquic")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ssh3-rel-")
    proc, port = start_server(tmp, args.backend)
    # drain the server's log so it never blocks on a full pipe
    drain = subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
    user = os.environ.get("USER") or subprocess.check_output(["id", "-un"]).decode().strip()
    cmd = ["ssh3", "-insecure", "-i", f"{tmp}/id", "-quic-backend", args.backend,
           f"{user}@127.0.0.1:{port}/bench", "echo hello"]
    rows = []
    try:
        results = [one_run(cmd) for _ in range(args.serial)]
        rows.append(("serial", results))
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(pool.map(lambda _: one_run(cmd), range(args.parallel)))
        rows.append((f"parallel x{args.workers}", results))
    finally:
        proc.terminate()
        proc.wait(10)
        drain.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'mode':<14}{'runs':>6}{'wrong output':>14}{'exit != 0':>11}{'median ms':>11}")
    bad = 0
    for name, results in rows:
        wrong = sum(1 for ok, good, _ in results if not good)
        failed = sum(1 for ok, _, _ in results if not ok)
        bad += wrong + failed
        med = statistics.median(t for _, _, t in results) * 1000 if results else 0
        print(f"{name:<14}{len(results):>6}{wrong:>14}{failed:>11}{med:>11.0f}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
