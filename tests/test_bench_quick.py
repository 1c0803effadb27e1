"""CI check of the benchmark suite: `bench/run.py --quick` runs to completion and
prints its tables, and the bench leaves nothing behind (servers, sshd, relays,
iptables rules, temp dirs), also when it is stopped half-way. No timing is
asserted: the figures depend on the machine and its load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "bench" / "run.py"
TABLES = ("1. Session setup", "2. Throughput", "4a. Scale", "4b. Scale",
          "3. Interactive latency")


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TMPDIR"] = str(tmp)  # the lab's temp dir lands here: leftovers are findable
    env["PYTHONPATH"] = str(REPO)
    env.pop("SSH3_REF_BIN_DIR", None)
    return env


def _processes_using(tmp: Path) -> list[str]:
    """Processes whose command line or open files point into `tmp`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if str(tmp) in cmdline or any(str(tmp) in fd for fd in fds):
            found.append(f"{pid}: {cmdline[:200]}")
    return found


def _iptables_rules_of(pid: int) -> list[str]:
    if shutil.which("iptables") is None or os.geteuid() != 0:
        return []
    listing = subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-S"], capture_output=True,
                             text=True, timeout=30).stdout
    return [line for line in listing.splitlines() if f"ssh3-bench-{pid}-" in line]


def _assert_clean(tmp: Path, pid: int) -> None:
    deadline = time.monotonic() + 10
    while (left := _processes_using(tmp)) and time.monotonic() < deadline:
        time.sleep(0.1)  # children that got SIGTERM may take a moment to go
    assert not left, f"left running: {left}"
    assert not _iptables_rules_of(pid)
    assert not list(tmp.glob("ssh3-bench-*")), "the lab's temp dir is still there"


@pytest.mark.timeout(960)  # about 2 minutes alone; far more on a busy 2-core machine
def test_quick_bench_runs_to_completion(tmp_path):
    out_json = tmp_path / "results" / "quick.json"
    proc = subprocess.Popen([sys.executable, str(RUN), "--quick", "--json", str(out_json)],
                            cwd=REPO, env=_env(tmp_path), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    for title in TABLES:
        assert title in stdout, f"table {title!r} missing:\n{stdout}"
    results = json.loads(out_json.read_text())
    assert not results.get("error") and not results.get("interrupted")
    assert {"setup", "throughput", "scale", "interactive"} <= results.keys()
    # every system was measured (a failed cell shows in the tables, not as a crash)
    assert set(results["setup"]["systems"]) == set(results["systems"])
    _assert_clean(tmp_path, proc.pid)


def test_stopped_bench_cleans_up(tmp_path):
    """SIGTERM while relays and NFQUEUE delays are up: everything is stopped."""
    proc = subprocess.Popen([sys.executable, str(RUN), "--quick", "--only", "setup",
                             "--json", str(tmp_path / "stopped.json")],
                            cwd=REPO, env=_env(tmp_path), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # progress lines; the delayed paths are up at RTT 50
            if "setup: RTT 50" in line:
                break
        else:
            raise AssertionError("the bench ended before it reached RTT 50")
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, rest[-2000:]
    assert "interrupted: stopping everything" in rest
    assert json.loads((tmp_path / "stopped.json").read_text())["interrupted"] is True
    _assert_clean(tmp_path, proc.pid)
