"""What every benchmark shares: starting and stopping servers by PID, client command
lines, CPU and memory readings from /proc, statistics and tables.

Nothing here times anything by itself; see run.py for the benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
URL_PATH = "/bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SSHD = "/usr/sbin/sshd"
REF_USER = "ssh3bench"


class BenchError(Exception):
    """A benchmark could not run; the message goes into the table."""


# ---------------------------------------------------------------- processes


# ---------------------------------------------------------------- interruption

# SIGTERM/^C unwind the bench (KeyboardInterrupt) into its cleanup. One landing
# between a child's fork and the moment it is tracked would leak that child, so
# spawning defers them (main thread only: signals are only delivered there).
_deferred = {"depth": 0, "pending": False}


def interrupt(signum: int, frame: object) -> None:
    """The bench's SIGTERM/SIGINT handler."""
    if _deferred["depth"] and threading.current_thread() is threading.main_thread():
        _deferred["pending"] = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    main = threading.current_thread() is threading.main_thread()
    if main:
        _deferred["depth"] += 1
    try:
        yield
    finally:
        if main:
            _deferred["depth"] -= 1
            if not _deferred["depth"] and _deferred["pending"]:
                _deferred["pending"] = False
                raise KeyboardInterrupt


# short-lived children (client runs): tracked until reaped, so that the cleanup stops
# one whose owner an interrupt unwound before it could
_transient: set[subprocess.Popen[Any]] = set()
_transient_lock = threading.Lock()


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen for a short-lived child; `stop_transient` ends what is left."""
    with interrupts_deferred():
        proc = subprocess.Popen(list(argv), **kwargs)
        with _transient_lock:
            _transient.add(proc)
    return proc


def stop_transient() -> None:
    with _transient_lock:
        left = list(_transient)
        _transient.clear()
    for proc in left:
        stop_pid(proc, 2.0, signal.SIGKILL)


class Processes:
    """Every long-lived process a benchmark starts, so each is stopped by its PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        with interrupts_deferred():  # tracked before an interrupt can unwind
            proc = subprocess.Popen(list(argv), **kwargs)
            self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
        stop_pid(proc, grace)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def stop_pid(proc: subprocess.Popen[Any], grace: float = 5.0,
             sig: int = signal.SIGTERM) -> None:
    """`sig` (SIGTERM), then SIGKILL after `grace` s, to this one process; reaped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    with _transient_lock:
        _transient.discard(proc)


def wait_for_line(path: Path, pattern: re.Pattern[str], proc: subprocess.Popen[Any],
                  timeout: float) -> re.Match[str]:
    """Poll a log file until a line matches (the process logs there, so no pipe fills)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                m = pattern.search(line)
                if m:
                    return m
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise BenchError(f"{Path(proc.args[0]).name} did not start: "
                     + tail(path).replace("\n", " | "))


def read_stdout_line(proc: subprocess.Popen[Any], pattern: re.Pattern[str],
                     timeout: float) -> re.Match[str]:
    """Read the child's stdout (a pipe) until a line matches, within `timeout`."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(BlockingIOError):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            m = pattern.search(buf.decode(errors="replace"))
            if m:
                return m
            continue
        time.sleep(0.01)
    raise BenchError(f"no {pattern.pattern!r} from {Path(proc.args[0]).name}: {buf[-300:]!r}")


def tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody uses right now (sshd and the Go server cannot pick one themselves)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def udp_port_bound(port: int) -> bool:
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 1 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


# ---------------------------------------------------------------- /proc readings


@dataclass
class ProcStat:
    pid: int
    ppid: int
    state: str
    cpu_ticks: int  # utime + stime
    child_ticks: int  # cutime + cstime: children it has reaped


def read_stat(pid: int) -> ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces
    rest = text[text.rindex(")") + 2:].split()
    return ProcStat(pid, int(rest[1]), rest[0], int(rest[11]) + int(rest[12]),
                    int(rest[13]) + int(rest[14]))


def all_stats() -> dict[int, ProcStat]:
    out: dict[int, ProcStat] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = read_stat(int(entry))
            if st is not None:
                out[st.pid] = st
    return out


def descendants(root: int, stats: dict[int, ProcStat] | None = None) -> list[int]:
    stats = all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu_seconds(root: int) -> float:
    """CPU time of a process tree: each live (or zombie) process's own time plus the
    time of the children it has reaped. A process that was reaped counts once, in its
    reaper's cutime/cstime; so the difference of two readings is the tree's CPU."""
    stats = all_stats()
    pids = [root, *descendants(root, stats)]
    ticks = sum(stats[p].cpu_ticks + stats[p].child_ticks for p in pids if p in stats)
    return ticks / CLK_TCK


def cpu_seconds(pid: int) -> float:
    st = read_stat(pid)
    return (st.cpu_ticks / CLK_TCK) if st else 0.0


def wait_tree_settled(root: int, keep: int = 0, timeout: float = 5.0) -> int:
    """Wait until the tree under `root` has at most `keep` descendants (sessions
    ended and reaped); returns how many are left."""
    deadline = time.monotonic() + timeout
    left = len(descendants(root))
    while left > keep and time.monotonic() < deadline:
        time.sleep(0.05)
        left = len(descendants(root))
    return left


def _status_kb(pid: int, key: str, file: str = "status") -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS:")


def pss_kb(pid: int) -> int:
    return _status_kb(pid, "Pss:", "smaps_rollup")


def tree_memory_kb(root: int) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, process count) over a process tree. RSS counts shared
    pages once per process; PSS shares them out, so its sum is the tree's real size."""
    pids = [root, *descendants(root)]
    return sum(rss_kb(p) for p in pids), sum(pss_kb(p) for p in pids), len(pids)


# ---------------------------------------------------------------- statistics


def summary(samples: Iterable[float]) -> dict[str, float]:
    xs = sorted(samples)
    if not xs:
        return {"n": 0}
    # nearest-rank percentile: an observed value, no interpolation
    p99 = xs[min(len(xs) - 1, max(0, -(-99 * len(xs) // 100) - 1))]
    return {"n": len(xs), "median": statistics.median(xs), "min": xs[0], "max": xs[-1],
            "p99": p99}


def fmt_range(s: dict[str, float], scale: float = 1.0, digits: int = 0) -> str:
    """`median [min–max]` or n/a."""
    if not s.get("n"):
        return "n/a"
    f = f"{{:.{digits}f}}"
    med, lo, hi = (f.format(s[k] * scale) for k in ("median", "min", "max"))
    return med if s["n"] == 1 else f"{med} [{lo}–{hi}]"


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "—"
    return f"{value / reference:.2f}×"


def render_table(title: str, notes: Sequence[str], header: Sequence[str],
                 rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        rest = "  ".join(f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True))
        return (first + "  " + rest).rstrip()

    out = [title, *[f"  {n}" for n in notes], line(header),
           "  ".join("-" * w for w in widths)]
    out += [line([str(c) for c in r]) for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------- systems under test


@dataclass
class System:
    """One server and the client that goes with it."""

    name: str  # shown in tables: "ssh3 aioquic", "OpenSSH", "Go ssh3 (ref)"
    kind: str  # "ssh3", "openssh", "ref"
    server: subprocess.Popen[Any]
    port: int  # UDP for ssh3/ref, TCP for OpenSSH
    user: str
    key: Path
    env: dict[str, str]
    backend: str | None = None
    ref_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def quic(self) -> bool:
        return self.kind != "openssh"

    def client(self, command: Sequence[str] = (), *, port: int | None = None,
               flags: Sequence[str] = ()) -> list[str]:
        """The client command line for `command` (port: a relay's instead)."""
        port = port or self.port
        if self.kind == "ssh3":
            return [sys.executable, "-m", "ssh3_client.cli", *self.extra.get("flags", []),
                    "-i", str(self.key), "-insecure", "-quic-backend", str(self.backend), *flags,
                    f"{self.user}@{HOST}:{port}{URL_PATH}", *command]
        if self.kind == "ref":
            assert self.ref_dir is not None
            return [str(self.ref_dir / "ssh3"), "-privkey", str(self.key), "-insecure", *flags,
                    f"{self.user}@{HOST}:{port}{URL_PATH}", *command]
        return ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR", "-i", str(self.key), "-p", str(port), *flags,
                f"{self.user}@{HOST}", *command]


class Lab:
    """A temp dir with keys, and the servers started in it; `close` undoes it all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs = Processes()
        self.home = tmp / "home"
        self.home.mkdir()
        self.key = tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ssh3-bench",
                        "-f", str(self.key)], check=True)
        self.pubkey = (tmp / "id_ed25519.pub").read_text().strip()
        (tmp / "authorized_keys").write_text(self.pubkey + "\n")
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.env = {
            "HOME": str(self.home),  # no ~/.ssh/config, known_hosts or agent leaks in
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO),  # the code under test is this checkout
        }
        # switches for before/after comparisons pass through (docs/throughput.md)
        for name in ("SSH3_PLAIN_UDP", "SSH3_NO_UVLOOP"):
            if name in os.environ:
                self.env[name] = os.environ[name]
        self.systems: list[System] = []
        self.extra: dict[str, Any] = {}  # facts found on the way (e.g. no NFQUEUE)
        self._made_run_sshd = False
        self._ref_key_added: Path | None = None

    def log(self, name: str) -> tuple[Path, IO[bytes]]:
        path = self.tmp / f"{name}.log"
        return path, open(path, "ab")  # noqa: SIM115 - the child owns it until stopped

    # ------------------------------------------------------------ our server

    def start_ssh3(self, backend: str) -> System:
        path, log = self.log(f"ssh3-server-{backend}")
        proc = self.procs.start(
            [sys.executable, "-m", "ssh3_server.cli", "-bind", f"{HOST}:0",
             "-url-path", URL_PATH, "-generate-selfsigned-cert",
             "-cert", str(self.tmp / f"cert-{backend}.pem"),
             "-key", str(self.tmp / f"key-{backend}.pem"),
             "-authorized-keys-file", str(self.tmp / "authorized_keys"),
             "-quic-backend", backend],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env)
        log.close()
        m = wait_for_line(path, re.compile(r"^ssh3-server: listening on \S+ port (\d+)"),
                          proc, 30)
        system = System(f"ssh3 {backend}", "ssh3", proc, int(m.group(1)), self.user,
                        self.key, self.env, backend=backend,
                        extra={"flags": self._ssh3_client_flags()})
        self.systems.append(system)
        return system

    def _ssh3_client_flags(self) -> list[str]:
        """`-F none` when our client reads ssh_config files: like ssh's -F /dev/null,
        /etc/ssh/ssh_config must not change what is measured."""
        if "ssh3_flags" not in self.extra:
            r = subprocess.run([sys.executable, "-m", "ssh3_client.cli", "-F", "none",
                                "-version"], capture_output=True, env=self.env, timeout=30)
            self.extra["ssh3_flags"] = ["-F", "none"] if r.returncode == 0 else []
        return list(self.extra["ssh3_flags"])

    # ------------------------------------------------------------ OpenSSH

    def start_sshd(self) -> System:
        if not os.path.exists(SSHD):
            raise BenchError(f"{SSHD} missing: apt-get install -y openssh-server")
        hostkey = self.tmp / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)],
                       check=True)
        if not os.path.isdir("/run/sshd"):
            # sshd's privilege separation directory; Debian's service unit makes it
            os.makedirs("/run/sshd", mode=0o755)
            self._made_run_sshd = True
        for _attempt in range(5):
            port = free_port()
            config = self.tmp / "sshd_config"
            config.write_text(f"""\
Port {port}
ListenAddress {HOST}
HostKey {hostkey}
AuthorizedKeysFile {self.tmp}/authorized_keys
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
PrintMotd no
PrintLastLog no
# the scale benchmark opens hundreds of connections; sshd's default 10:30:100
# would drop unauthenticated ones
MaxStartups 1000
AllowTcpForwarding yes
LogLevel INFO
""")
            path, log = self.log("sshd")
            proc = self.procs.start([SSHD, "-D", "-e", "-f", str(config)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            log.close()
            try:
                wait_for_line(path, re.compile(rf"Server listening on {HOST} port {port}"),
                              proc, 15)
            except BenchError:
                self.procs.stop(proc)
                continue  # the port was taken meanwhile: another one
            system = System("OpenSSH", "openssh", proc, port, self.user, self.key, self.env)
            self.systems.append(system)
            return system
        raise BenchError("sshd did not start: " + tail(self.tmp / "sshd.log"))

    # ------------------------------------------------------------ reference Go ssh3

    def start_ref(self, ref_dir: Path) -> System:
        """The reference server runs as root and serves a real user from that user's
        ~/.ssh/authorized_keys: a dedicated account, created when missing (as the
        interop harness does); our key line is removed again in close()."""
        for binary in ("ssh3", "ssh3-server"):
            if not os.access(ref_dir / binary, os.X_OK):
                raise BenchError(f"{ref_dir / binary} is missing or not executable")
        if os.geteuid() != 0:
            raise BenchError("the reference server needs root")
        try:
            pw = pwd.getpwnam(REF_USER)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", REF_USER], check=True)
            pw = pwd.getpwnam(REF_USER)
        ssh_dir = Path(pw.pw_dir) / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        ak = ssh_dir / "authorized_keys"
        with open(ak, "a") as f:
            f.write(self.pubkey + "\n")
        os.chown(ssh_dir, pw.pw_uid, pw.pw_gid)
        os.chown(ak, pw.pw_uid, pw.pw_gid)
        self._ref_key_added = ak
        for _attempt in range(5):
            port = free_port(socket.SOCK_DGRAM)
            path, log = self.log("ref-server")
            cert, key = self.tmp / "ref-cert.pem", self.tmp / "ref-key.pem"
            for p in (cert, key):
                p.unlink(missing_ok=True)
            proc = self.procs.start(
                [str(ref_dir / "ssh3-server"), "-bind", f"{HOST}:{port}", "-url-path", URL_PATH,
                 "-cert", str(cert), "-key", str(key), "-generate-selfsigned-cert"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.tmp)
            log.close()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and proc.poll() is None:
                if udp_port_bound(port):
                    system = System("Go ssh3 (ref)", "ref", proc, port, REF_USER, self.key,
                                    self.env, ref_dir=ref_dir)
                    self.systems.append(system)
                    return system
                time.sleep(0.05)
            self.procs.stop(proc)
        raise BenchError("the reference server did not start: " + tail(self.tmp / "ref-server.log"))

    # ------------------------------------------------------------ the end

    def close(self, keep_logs: Path | None = None) -> None:
        # sessions outlive a stopped sshd listener: end what the servers spawned first
        for system in self.systems:
            for pid in descendants(system.server.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        self.procs.stop_all()
        stop_transient()
        if self._ref_key_added is not None:
            with contextlib.suppress(OSError):
                lines = self._ref_key_added.read_text().splitlines()
                self._ref_key_added.write_text(
                    "".join(line + "\n" for line in lines if line.strip() != self.pubkey))
        if keep_logs is not None:
            with contextlib.suppress(OSError):
                keep_logs.mkdir(parents=True, exist_ok=True)
                for log in self.tmp.glob("*.log"):
                    shutil.copy(log, keep_logs / log.name)
        if self._made_run_sshd:
            with contextlib.suppress(OSError):
                os.rmdir("/run/sshd")
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_timed(argv: Sequence[str], env: dict[str, str], timeout: float,
              stdin: Any = subprocess.DEVNULL) -> tuple[int, float, bytes, bytes]:
    """Run to completion; (exit code, wall seconds, stdout, stderr). Killed by PID
    when it overruns (exit code -9)."""
    start = time.perf_counter()
    proc = spawn(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                 start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_pid(proc, 2.0, signal.SIGKILL)
        return -9, time.perf_counter() - start, b"", b"timeout"
    except BaseException:
        # interrupted (SIGTERM/^C unwinds the bench): the client must not outlive it
        stop_pid(proc, 2.0, signal.SIGKILL)
        raise
    stop_pid(proc)  # reaped already: only forgets it
    return proc.returncode, time.perf_counter() - start, out, err
