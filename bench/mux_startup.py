"""Wall time of `ssh3 host true`: a fresh connection vs. one multiplexed through a
ControlMaster (loopback, median of N runs, per QUIC backend).

    PYTHONPATH=. python bench/mux_startup.py [--runs 20] [--backends aioquic,qh3]

Also prints the interpreter's own start-up (`python -c pass` and the same with the
site hooks of this installation), which bounds what any Python client can reach.
Every process started is stopped by its PID.
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
from pathlib import Path

HOST = "127.0.0.1"


def program(name: str) -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.access(candidate, os.X_OK) else (shutil.which(name) or name)


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=60)
        samples.append(time.perf_counter() - start)
        if r.returncode != 0:
            raise SystemExit(f"{argv} failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return samples


def bench_backend(backend: str, work: Path, runs: int) -> tuple[float, float]:
    key = work / "id"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        (work / "ak").write_bytes((work / "id.pub").read_bytes())
    log = work / f"server-{backend}.log"
    with open(log, "wb") as err:
        server = subprocess.Popen(
            [program("ssh3-server"), "-bind", f"{HOST}:0", "-quic-backend", backend,
             "-authorized-keys-file", str(work / "ak"), "-generate-selfsigned-cert",
             "-cert", str(work / f"c-{backend}.pem"), "-key", str(work / f"k-{backend}.pem")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True)
    master_pid = None
    env = dict(os.environ, HOME=str(work))
    try:
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            m = re.search(rb"listening on \S+ port (\d+)", log.read_bytes())
            port = int(m.group(1)) if m else None
            time.sleep(0.02)
        if port is None:
            raise SystemExit(f"server did not start: {log.read_text()}")
        base = [program("ssh3"), "-F", "none", "-i", str(key), "-quic-backend", backend,
                "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={work}/kh-{backend}"]
        target = [f"{HOST}:{port}", "true"]
        timed(base + target, env, 2)  # warm the page cache, write known_hosts
        fresh = timed(base + target, env, runs)
        ctl = ["-o", "ControlMaster=auto", "-o", f"ControlPath={work}/ctl-{backend}",
               "-o", "ControlPersist=yes"]
        timed(base + ctl + target, env, 2)  # starts the master
        check = subprocess.run(base + ctl + ["-O", "check", f"{HOST}:{port}"], env=env,
                               capture_output=True, timeout=10)
        m = re.search(rb"pid=(\d+)", check.stderr)
        master_pid = int(m.group(1)) if m else None
        muxed = timed(base + ctl + target, env, runs)
        # the same run by an interpreter without site hooks (python -S): what a
        # multiplexed run costs where site-packages has no .pth files to execute
        repo = str(Path(__file__).resolve().parent.parent)
        code = (f"import sys; sys.path.insert(0, {repo!r}); "
                "from ssh3_client.cli import main; sys.exit(main())")
        bare = timed([sys.executable, "-S", "-c", code, *(base + ctl + target)[1:]], env, runs)
        print(f"{backend}: multiplexed with python -S: {statistics.median(bare) * 1000:.0f} ms")
        subprocess.run(base + ctl + ["-O", "exit", f"{HOST}:{port}"], env=env,
                       capture_output=True, timeout=10)
        return statistics.median(fresh), statistics.median(muxed)
    finally:
        if master_pid is not None:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and os.path.exists(f"/proc/{master_pid}"):
                time.sleep(0.05)
            if os.path.exists(f"/proc/{master_pid}"):
                os.kill(master_pid, 9)
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--backends", default="aioquic,qh3")
    opts = ap.parse_args()
    env = dict(os.environ)
    bare = statistics.median(timed([sys.executable, "-S", "-c", "pass"], env, opts.runs))
    site = statistics.median(timed([sys.executable, "-c", "pass"], env, opts.runs))
    print(f"python -S -c pass: {bare * 1000:.0f} ms; python -c pass: {site * 1000:.0f} ms "
          f"(median of {opts.runs})")
    with tempfile.TemporaryDirectory(prefix="muxb") as tmp:
        for backend in opts.backends.split(","):
            fresh, muxed = bench_backend(backend, Path(tmp), opts.runs)
            print(f"{backend}: fresh `ssh3 host true` {fresh * 1000:.0f} ms, multiplexed "
                  f"{muxed * 1000:.0f} ms (median of {opts.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
