"""Helpers for the end-to-end tests: real `ssh3-server` and `ssh3` subprocesses.

Nothing here is mocked. A `Server` is a real `ssh3-server` process listening on
127.0.0.1 with a port the kernel picked; a `Client` runs the real `ssh3` program with
its own HOME (so its known_hosts belongs to the test) and an explicit `-i` key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import getpass
import hashlib
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

BACKENDS = ("aioquic", "qh3")
BACKEND_PAIRS = [(s, c) for s in BACKENDS for c in BACKENDS]
HOST = "127.0.0.1"
DEFAULT_PATH = "/ssh3-term"
USER = getpass.getuser()

# PIDs of every ssh3-server these tests started (checked at the end of the session)
STARTED_SERVER_PIDS: set[int] = set()

_LISTEN_RE = re.compile(rb"ssh3-server: listening on (\S+) port (\d+)")


def find_program(name: str) -> str:
    """The installed console script: next to the interpreter first (this skips the
    pyenv shim's start-up cost), else on PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (pip install -e .)")
    return found


SSH3 = find_program("ssh3")
SSH3_SERVER = find_program("ssh3-server")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_key(directory: Path, name: str = "id_ed25519") -> Path:
    """A fresh passphrase-less Ed25519 key made by ssh-keygen; returns the private key path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e-test",
                    "-f", str(path)], check=True, timeout=30,
                   stdin=subprocess.DEVNULL, capture_output=True)
    return path


def cert_der(cert_pem: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    return cert.public_bytes(Encoding.DER)


def known_hosts_line(port: int, der: bytes, path: str = DEFAULT_PATH, host: str = HOST) -> str:
    """`host:port/path x509-certificate base64-std(DER)` (ssh3/known_hosts.py)."""
    return f"{host}:{port}{path} x509-certificate {base64.b64encode(der).decode()}\n"


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except OSError:
        return False


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """terminate, wait with a timeout, then kill: by PID, never by name."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)


# ---------------------------------------------------------------------- server


@dataclass
class Server:
    workdir: Path
    backend: str
    authorized_keys: Path
    url_path: str = DEFAULT_PATH
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def cert(self) -> Path:
        return self.workdir / "cert.pem"

    @property
    def key(self) -> Path:
        return self.workdir / "key.pem"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [SSH3_SERVER, "-bind", f"{HOST}:0", "-quic-backend", self.backend,
                "-url-path", self.url_path,
                "-authorized-keys-file", str(self.authorized_keys),
                "-generate-selfsigned-cert", "-cert", str(self.cert), "-key", str(self.key),
                *self.extra_args]
        env = dict(os.environ)
        env.pop("SSH3_QUIC_BACKEND", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log, env=env,
                                         start_new_session=True)
        STARTED_SERVER_PIDS.add(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTEN_RE.search(self.log_path.read_bytes())
            if match:
                self.port = int(match.group(2))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"ssh3-server did not start: {self.log()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def der(self) -> bytes:
        return cert_der(self.cert)

    def known_hosts_line(self) -> str:
        return known_hosts_line(self.port, self.der, self.url_path)

    def target(self, path: str | None = None) -> str:
        return f"{HOST}:{self.port}{path if path is not None else self.url_path}"


# ---------------------------------------------------------------------- client


@dataclass
class Client:
    """Runs `ssh3` with its own HOME and key."""

    home: Path
    key: Path
    backend: str = "aioquic"

    @property
    def known_hosts(self) -> Path:
        return self.home / ".ssh3" / "known_hosts"

    def trust(self, server: Server) -> None:
        """Pre-seed known_hosts with the server's certificate."""
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.known_hosts, "a") as f:
            f.write(server.known_hosts_line())

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SSH3_QUIC_BACKEND", None)
        env["HOME"] = str(self.home)
        env.update(extra)
        return env

    def argv(self, server: Server, command: list[str] | str | None, *, path: str | None = None,
             key: Path | None = None, extra_args: list[str] | tuple[str, ...] = ()) -> list[str]:
        cmd = [command] if isinstance(command, str) else list(command or [])
        return [SSH3, "-i", str(key or self.key), "-quic-backend", self.backend,
                *extra_args, server.target(path), *cmd]

    def run(self, server: Server, command: list[str] | str | None, *, stdin: object = None,
            input: bytes | None = None, timeout: float = 60.0, path: str | None = None,
            key: Path | None = None, extra_args: list[str] | tuple[str, ...] = (),
            stdout: object = subprocess.PIPE) -> subprocess.CompletedProcess:
        """Run without a controlling terminal (new session), so a prompt can never
        reach whoever runs the tests."""
        if input is None and stdin is None:
            stdin = subprocess.DEVNULL
        return subprocess.run(self.argv(server, command, path=path, key=key,
                                        extra_args=extra_args),
                              stdin=stdin, input=input, stdout=stdout, stderr=subprocess.PIPE,
                              env=self.env(), timeout=timeout, start_new_session=True)


# ---------------------------------------------------------------------- pty


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _make_controlling_tty() -> None:  # runs in the child, after setsid and the dup2s
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyProcess:
    """A program whose controlling terminal, stdin, stdout and stderr are the slave
    side of a fresh pty; the test talks to the master."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 24,
                 cols: int = 80) -> None:
        self.master, slave = os.openpty()
        set_winsize(slave, rows, cols)
        try:
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                         start_new_session=True,
                                         preexec_fn=_make_controlling_tty,
                                         close_fds=True)
        except BaseException:
            os.close(self.master)
            raise
        finally:
            os.close(slave)
        self.output = bytearray()
        self.pos = 0  # start of the part not yet matched by `expect`

    @property
    def pid(self) -> int:
        return self.proc.pid

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def _read_some(self, wait: float) -> bool:
        """Read what is available within `wait` seconds; False at EOF."""
        ready, _, _ = select.select([self.master], [], [], max(0.0, wait))
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:  # every slave fd closed: the child is gone
                return False
            raise
        if not data:
            return False
        self.output += data
        return True

    def expect(self, pattern: bytes, timeout: float = 15.0) -> re.Match[bytes]:
        """Wait for `pattern` (a regex) in the output after the last match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output, self.pos)
            if match:
                self.pos = match.end()
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not self._read_some(min(remaining, 0.5)):
                match = regex.search(self.output, self.pos)
                if match:
                    self.pos = match.end()
                    return match
                break
        raise AssertionError(
            f"{pattern!r} not seen within {timeout} s; output so far: "
            f"{bytes(self.output[-2000:])!r}")

    def wait(self, timeout: float = 15.0) -> int:
        """Drain the output (so the child never blocks writing) until it exits."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if not self._read_some(0.1):
                break
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        stop_process(self.proc)
        with contextlib.suppress(OSError):
            os.close(self.master)

    def signal(self, signum: int = signal.SIGWINCH) -> None:
        os.kill(self.proc.pid, signum)


# ---------------------------------------------------------------------- asyncio


def run_async(coro: object, timeout: float = 60.0) -> object:
    """asyncio.run with an overall deadline."""
    async def bounded() -> object:
        return await asyncio.wait_for(coro, timeout)  # type: ignore[arg-type]

    return asyncio.run(bounded())
