"""Harness for the interop tests against the reference Go binaries.

Nothing here is mocked: servers and clients are real processes. The reference
programs come from ``$SSH3_REF_BIN_DIR``; ours run as ``python -m ssh3_client.cli`` /
``python -m ssh3_server.cli`` from this checkout, so the code under test is the
working tree and not whatever happens to be installed.

Rules the harness keeps (see interop/README.md):

* every subprocess has a timeout, and is killed by PID when it runs over;
* every server is stopped by PID (SIGTERM, then SIGKILL) in a finalizer;
* clients run in a new session (no controlling terminal) unless a test gives them
  a pty on purpose, so a TOFU prompt can never block on the developer's terminal;
* clients get a scratch ``$HOME`` and a minimal environment (no ``SSH_AUTH_SOCK``),
  so neither ``~/.ssh/config`` nor an agent nor a real known_hosts can leak in.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import os
import pwd
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
URL_PATH = "/ssh3-interop"
WRONG_PATH = "/not-the-secret-path"

REF_DIR_ENV = "SSH3_REF_BIN_DIR"
REF_CLIENT = "ssh3"
REF_SERVER = "ssh3-server"
OUR_BACKENDS = ("aioquic", "qh3")

CLIENT_TIMEOUT = float(os.environ.get("SSH3_INTEROP_CLIENT_TIMEOUT", "30"))
SERVER_START_TIMEOUT = 20.0

# how often a single-shot check against the reference server is retried when that
# server lost the command's output (its own bug, PROTOCOL.md §11.6)
LOSS_ATTEMPTS = 10

_LISTEN_RE = re.compile(rb"ssh3-server: listening on (\S+) port (\d+)")


# ---------------------------------------------------------------- keys and users


@dataclass
class KeyPair:
    private_path: Path
    public_line: str  # "ssh-ed25519 AAAA... comment"


def make_ed25519_key(directory: Path, name: str, comment: str) -> KeyPair:
    """An unencrypted OpenSSH-format Ed25519 key; the Go client's -privkey reads it."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    line = f"{public} {comment}"
    (directory / (name + ".pub")).write_text(line + "\n")
    return KeyPair(path, line)


@dataclass
class LoginUser:
    """The UNIX account the sessions run as."""

    name: str
    uid: int
    gid: int
    home: str
    # None: the servers read the default files (~user/.ssh/authorized_keys, found
    # through getpwnam, which is what the reference does); otherwise a file handed to
    # our server with -authorized-keys-file (non-root runs only)
    authorized_keys_file: Path | None = None


def user_processes(uid: int) -> set[int]:
    """PIDs of the processes whose real uid is *uid* (Linux /proc)."""
    pids: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.add(int(entry))
                        break
        except (OSError, ValueError):
            continue
    return pids


# ---------------------------------------------------------------- ports


def pick_free_udp_port() -> int:
    """A UDP port nobody uses right now (the reference server cannot pick one itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def udp_port_bound(port: int) -> bool | None:
    """Whether some socket is bound to UDP *port* (None: /proc/net/udp unreadable)."""
    seen_table = False
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        seen_table = True
        for line in lines:
            fields = line.split()
            if len(fields) < 2:
                continue
            with contextlib.suppress(ValueError):
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False if seen_table else None


# ---------------------------------------------------------------- processes


def stop_pid(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, to this one process (by PID); always reaped."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)


def client_env(home: Path, term: str | None = None) -> dict[str, str]:
    """A minimal environment: scratch HOME, no agent, no inherited SSH3_* settings."""
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if term is not None:
        env["TERM"] = term
    return env


def our_client_argv(backend: str) -> list[str]:
    return [sys.executable, "-m", "ssh3_client.cli", "-quic-backend", backend]


def our_server_argv(backend: str) -> list[str]:
    return [sys.executable, "-m", "ssh3_server.cli", "-quic-backend", backend]


@dataclass
class ServerProcess:
    """A running server (ours or the reference) and where it logs."""

    kind: str  # "ref" or "ours"
    backend: str | None  # our QUIC backend; None for the reference
    proc: subprocess.Popen
    port: int
    url_path: str
    cert_path: Path
    log_path: Path
    _log_file: object = field(default=None, repr=False)

    @property
    def label(self) -> str:
        if self.kind == "ref":
            return "reference ssh3-server"
        return f"our ssh3-server [{self.backend}]"

    def cert_der(self) -> bytes:
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        return cert.public_bytes(serialization.Encoding.DER)

    def known_hosts_line(self, host: str = HOST) -> str:
        """§1.5: ``<host>:<port><path> x509-certificate <base64-std(DER)>``."""
        b64 = base64.b64encode(self.cert_der()).decode("ascii")
        return f"{host}:{self.port}{self.url_path} x509-certificate {b64}"

    def log_tail(self, limit: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        return data[-limit:].decode("utf-8", "replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"{self.label} (pid {self.proc.pid}) is not running any more "
                f"(exit status {self.proc.returncode}); its log ends with:\n{self.log_tail()}")

    def stop(self) -> None:
        try:
            stop_pid(self.proc)
        finally:
            if self._log_file is not None:
                self._log_file.close()  # type: ignore[attr-defined]
                self._log_file = None


def _spawn_server(argv: list[str], workdir: Path, log_path: Path) -> tuple[subprocess.Popen,
                                                                            object]:
    log_file = open(log_path, "ab")  # noqa: SIM115 - closed by ServerProcess.stop
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    env["PYTHONPATH"] = str(REPO)
    try:
        proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    except BaseException:
        log_file.close()
        raise
    return proc, log_file


def start_reference_server(bin_dir: Path, workdir: Path, url_path: str = URL_PATH,
                           attempts: int = 3, extra_args: tuple[str, ...] = ()
                           ) -> ServerProcess:
    """``ssh3-server -bind 127.0.0.1:PORT ... -generate-selfsigned-cert -v`` on a port
    we pick (it has no port 0 support); ready once the port is bound."""
    last_error = ""
    for attempt in range(attempts):
        run_dir = workdir / f"ref-server-{attempt}"
        run_dir.mkdir(parents=True)
        cert, key = run_dir / "cert.pem", run_dir / "priv.key"
        port = pick_free_udp_port()
        log_path = run_dir / "server.log"
        argv = [str(bin_dir / REF_SERVER), "-bind", f"{HOST}:{port}", "-url-path", url_path,
                "-cert", str(cert), "-key", str(key), "-generate-selfsigned-cert", "-v",
                *extra_args]
        proc, log_file = _spawn_server(argv, run_dir, log_path)
        server = ServerProcess("ref", None, proc, port, url_path, cert, log_path, log_file)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                bound = udp_port_bound(port)
                if bound is None:  # no /proc: give it a moment
                    time.sleep(1.5)
                    bound = True
                if bound and cert.exists():
                    time.sleep(0.2)  # bound, serving a moment later
                    server.check_alive()
                    return server
                time.sleep(0.05)
            last_error = (f"{' '.join(argv)}: exit status {proc.poll()}, log:\n"
                          f"{server.log_tail()}")
        except BaseException:
            server.stop()
            raise
        server.stop()  # port stolen in the meantime, or a crash: try another port
    raise RuntimeError(f"the reference ssh3-server did not start:\n{last_error}")


def start_our_server(backend: str, workdir: Path, url_path: str = URL_PATH,
                     authorized_keys_file: Path | None = None,
                     extra_args: tuple[str, ...] = ()) -> ServerProcess:
    """Our ``ssh3-server`` on port 0; the port comes from its ``listening on`` line."""
    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = workdir / "cert.pem", workdir / "priv.key"
    log_path = workdir / "server.log"
    argv = [*our_server_argv(backend), "-bind", f"{HOST}:0", "-url-path", url_path,
            "-cert", str(cert), "-key", str(key), "-generate-selfsigned-cert"]
    if authorized_keys_file is not None:
        argv += ["-authorized-keys-file", str(authorized_keys_file)]
    argv += extra_args
    proc, log_file = _spawn_server(argv, workdir, log_path)
    server = ServerProcess("ours", backend, proc, 0, url_path, cert, log_path, log_file)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            m = _LISTEN_RE.search(log_path.read_bytes())
            if m:
                server.port = int(m.group(2))
                return server
            server.check_alive()
            time.sleep(0.05)
        raise RuntimeError(f"our ssh3-server printed no port within {SERVER_START_TIMEOUT} s; "
                           f"log:\n{server.log_tail()}")
    except BaseException:
        server.stop()
        raise


# ---------------------------------------------------------------- client runs


@dataclass
class Result:
    argv: list[str]
    code: int
    stdout: bytes
    stderr: bytes
    elapsed: float

    def describe(self) -> str:
        return (f"command: {' '.join(self.argv)}\nexit status: {self.code} "
                f"({self.elapsed:.1f} s)\nstdout: {self.stdout!r}\nstderr: "
                f"{self.stderr.decode('utf-8', 'replace')[-3000:]}")


def _identity(run_as: tuple[int, int] | None) -> dict[str, object]:
    """Popen arguments that run the child as (uid, gid), supplementary groups cleared."""
    if run_as is None:
        return {}
    return {"user": run_as[0], "group": run_as[1], "extra_groups": []}


def run_client(argv: list[str], home: Path, stdin: bytes | None = None,
               timeout: float = CLIENT_TIMEOUT, run_as: tuple[int, int] | None = None
               ) -> Result:
    """Run a client to completion without a controlling terminal. ``stdin`` None
    means /dev/null; bytes are written to a pipe which is then closed (EOF)."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv, input=stdin, stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True, env=client_env(home), cwd=home, timeout=timeout,
            start_new_session=True, **_identity(run_as))  # type: ignore[arg-type]
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed it by PID
        raise AssertionError(
            f"client timed out after {timeout:.0f} s: {' '.join(argv)}\n"
            f"stdout so far: {exc.stdout!r}\nstderr so far: {exc.stderr!r}") from None
    return Result(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


# ---------------------------------------------------------------- a client on a pty

def _take_controlling_terminal() -> None:
    """In the child, after setsid(): the pty on fd 0 becomes the controlling terminal,
    so /dev/tty works (the Go client needs it to ask for a pty)."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_winsize(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


class PtyProcess:
    """A client whose stdin, stdout, stderr and controlling terminal are a fresh pty
    of a given size. Every wait is a bounded select loop with a deadline."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, rows: int,
                 columns: int, run_as: tuple[int, int] | None = None) -> None:
        self.argv = argv
        master, slave = os.openpty()
        try:
            set_winsize(slave, rows, columns)
            self.proc = subprocess.Popen(
                argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                start_new_session=True, preexec_fn=_take_controlling_terminal,
                close_fds=True, **_identity(run_as))  # type: ignore[arg-type]
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.master = master
        self.transcript = bytearray()
        self._pos = 0  # expect() searches from here
        self._eof = False

    def _read(self, timeout: float) -> None:
        if self._eof:
            time.sleep(min(timeout, 0.05))
            return
        ready, _, _ = select.select([self.master], [], [], max(0.0, timeout))
        if not ready:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: every slave fd is closed
                raise
            data = b""
        if data:
            self.transcript += data
        else:
            self._eof = True

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 10
        while view:
            _, ready, _ = select.select([], [self.master], [], 0.5)
            if ready:
                view = view[os.write(self.master, view):]
            elif time.monotonic() > deadline:
                raise AssertionError(f"cannot write to the pty of {self.argv[0]}")
            else:
                self._read(0)  # keep the other direction flowing

    def expect(self, pattern: bytes, timeout: float = 15.0,
               resend: bytes | None = None, resend_every: float = 3.0) -> re.Match[bytes]:
        """Wait for *pattern* in the output after the last match. With *resend*, the
        bytes are sent first and then again every *resend_every* seconds (a shell that
        is still starting may not see the first ones)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        next_resend = time.monotonic()
        while True:
            m = regex.search(self.transcript, self._pos)
            if m:
                self._pos = m.end()
                return m
            now = time.monotonic()
            if now >= deadline:
                raise AssertionError(
                    f"{pattern!r} not seen within {timeout:.0f} s from {self.argv[0]} "
                    f"(exit status {self.proc.poll()}); transcript:\n{self.text()}")
            if resend is not None and now >= next_resend:
                self.send(resend)
                next_resend = now + resend_every
            if self._eof and self.proc.poll() is not None:
                self._read(0)
                if not regex.search(self.transcript, self._pos):
                    raise AssertionError(
                        f"{self.argv[0]} exited ({self.proc.returncode}) before {pattern!r} "
                        f"appeared; transcript:\n{self.text()}")
            self._read(min(0.2, deadline - now))

    def wait(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.argv[0]} did not exit within {timeout:.0f} s; transcript:\n"
                    f"{self.text()}")
            self._read(0.1)
        # collect what is left without blocking
        for _ in range(50):
            if self._eof:
                break
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                break
            self._read(0)
        return self.proc.returncode

    def text(self) -> str:
        return self.transcript.decode("utf-8", "replace")[-4000:]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                stop_pid(self.proc, grace=3.0)
        finally:
            with contextlib.suppress(OSError):
                os.close(self.master)


# ---------------------------------------------------------------- keys


@dataclass
class Keys:
    good: KeyPair  # authorized for the login user
    wrong: KeyPair  # authorized nowhere


# ---------------------------------------------------------------- client/server pairs


@dataclass
class Pair:
    """One direction: a client program talking to a server process.

    ``client`` is "ours" (then the server is the reference) or "ref" (then the server
    is ours); ``backend`` is the QUIC backend of our side.

    Our client runs with a scratch ``$HOME``. The reference client ignores ``$HOME``:
    it finds ``~/.ssh3`` through the passwd entry of the user running it
    (``os/user.Current()``), so as root it runs as the login user (``ref_run_as``),
    whose home the harness controls; otherwise it runs as the current user.
    """

    client: str
    backend: str
    server: ServerProcess
    user: LoginUser
    keys: Keys
    ref_client: Path
    home: Path
    ref_run_as: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        c = "Go client" if self.client == "ref" else f"our client [{self.backend}]"
        return f"{c} -> {self.server.label}"

    @property
    def server_is_ref(self) -> bool:
        return self.server.kind == "ref"

    @property
    def run_as(self) -> tuple[int, int] | None:
        return self.ref_run_as if self.client == "ref" else None

    @property
    def client_home(self) -> Path:
        if self.client == "ref":
            return Path(pwd.getpwuid(self.run_as[0] if self.run_as else os.getuid()).pw_dir)
        return self.home

    def target(self, user: str | None = None, path: str | None = None) -> str:
        return f"{user or self.user.name}@{HOST}:{self.server.port}" \
               f"{path or self.server.url_path}"

    def seed_known_hosts(self) -> Path:
        """``~/.ssh3/known_hosts`` of the client holding the server's certificate (§1.5)."""
        if self.client == "ref" and self.run_as is None:
            pytest.skip("the reference client reads ~/.ssh3/known_hosts from its passwd home "
                        "directory, not $HOME: only seeded when running as root (as the "
                        "dedicated login user)")
        directory = self.client_home / ".ssh3"
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / "known_hosts"
        path.write_text(self.server.known_hosts_line() + "\n")
        path.chmod(0o600)
        if self.run_as is not None:
            os.chown(directory, *self.run_as)
            os.chown(path, *self.run_as)
        return path

    def client_argv(self, command: str | None = None, *, trust: str = "insecure",
                    key: KeyPair | None = None, user: str | None = None,
                    path: str | None = None) -> list[str]:
        key = key or self.keys.good
        if self.client == "ref":
            argv = [str(self.ref_client), "-privkey", str(key.private_path)]
        else:
            argv = [*our_client_argv(self.backend), "-i", str(key.private_path)]
        if trust == "insecure":
            argv.append("-insecure")
        elif trust == "known_hosts":
            self.seed_known_hosts()
        else:
            raise ValueError(trust)
        argv.append(self.target(user, path))
        if command is not None:
            argv.append(command)  # one word: both clients join words with spaces
        return argv

    def run(self, command: str, *, stdin: bytes | None = None,
            timeout: float = CLIENT_TIMEOUT, **kwargs: object) -> Result:
        self.server.check_alive()
        return run_client(self.client_argv(command, **kwargs),  # type: ignore[arg-type]
                          self.client_home, stdin, timeout, self.run_as)

    def pty(self, *, rows: int, columns: int, term: str = "vt100",
            trust: str = "insecure") -> PtyProcess:
        self.server.check_alive()
        return PtyProcess(self.client_argv(None, trust=trust),
                          client_env(self.client_home, term), self.client_home, rows,
                          columns, self.run_as)

    def failure(self, result: Result, what: str) -> str:
        return (f"{self.name}: {what}\n{result.describe()}\n--- {self.server.label} log "
                f"tail ---\n{self.server.log_tail()}")


# ---------------------------------------------------------------- output checks


def check_output(pair: Pair, command: str, *, code: int = 0, stdout: bytes = b"",
                 stderr_contains: bytes | None = None, attempts: int = LOSS_ATTEMPTS,
                 **kwargs: object) -> Result:
    """Run *command* and check the exit status and output.

    Against our server the output must be exact on the first run. The reference server
    sometimes loses a short command's output while still reporting its exit status
    (PROTOCOL.md §11.6): there a run whose stream is *empty* counts as a loss and is
    retried, anything else that is wrong fails at once. If every attempt lost output,
    the test is marked xfail with that reason (test_repeated_echo compares the loss
    rate with the reference client's, which catches a client that causes it).
    """
    losses = 0
    for _ in range(attempts if pair.server_is_ref else 1):
        result = pair.run(command, **kwargs)
        assert result.code == code, pair.failure(result, f"exit status {result.code}, "
                                                          f"expected {code}")
        if stderr_contains is not None:
            assert stderr_contains not in result.stdout, pair.failure(
                result, "stderr text came out on stdout")
        stderr_ok = stderr_contains is None or stderr_contains in result.stderr
        if result.stdout == stdout and stderr_ok:
            if losses:
                warnings.warn(f"{pair.name}: the reference server lost the output of "
                              f"{command!r} in {losses} run(s) before a complete one "
                              "(PROTOCOL.md §11.6)", stacklevel=2)
            return result
        if not pair.server_is_ref:
            raise AssertionError(pair.failure(result, f"expected stdout {stdout!r}"
                                              + (f" and {stderr_contains!r} on stderr"
                                                 if stderr_contains else "")))
        # the reference server: only an all-or-nothing loss per stream is tolerated
        assert result.stdout in (stdout, b""), pair.failure(
            result, f"wrong stdout (expected {stdout!r} or nothing)")
        losses += 1
    pytest.xfail(f"{pair.server.label} lost the output of {command!r} in all {attempts} "
                 "runs (reference bug, PROTOCOL.md §11.6)")
    raise AssertionError("unreachable")
