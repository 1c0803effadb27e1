"""Spawning session processes as the authenticated user, on pipes or on a pty."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import pwd
import signal
import struct
import termios
from dataclasses import dataclass

log = logging.getLogger("ssh3.server")

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
READ_CHUNK = 32768


@dataclass(frozen=True)
class UserInfo:
    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @classmethod
    def lookup(cls, name: str) -> UserInfo:
        """KeyError if there is no such user."""
        pw = pwd.getpwnam(name)
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell or "/bin/sh")


@dataclass
class PtyParams:
    term: str
    columns: int
    rows: int
    pixel_width: int = 0
    pixel_height: int = 0


def set_window_size(fd: int, columns: int, rows: int, xpixel: int = 0, ypixel: int = 0) -> None:
    # the kernel field is 16-bit; the reference truncates the same way
    packed = struct.pack("HHHH", rows & 0xFFFF, columns & 0xFFFF, xpixel & 0xFFFF,
                         ypixel & 0xFFFF)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, packed)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class FdReader:
    """Non-blocking reads of a pipe or pty master, with EIO treated as EOF (a pty
    whose slave side is closed by every process reports EIO, not 0)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._loop = asyncio.get_running_loop()

    async def read(self, n: int = READ_CHUNK) -> bytes:
        while True:
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return b""
                raise
            fut = self._loop.create_future()
            self._loop.add_reader(self.fd, _wake, fut)
            try:
                await fut
            finally:
                self._loop.remove_reader(self.fd)

    def read_now(self, n: int = READ_CHUNK) -> bytes:
        """What can be read without waiting (b"" if nothing or at EOF)."""
        try:
            return os.read(self.fd, n)
        except (BlockingIOError, OSError):
            return b""


class FdWriter:
    """Non-blocking writes that wait for the fd to drain (back-pressure to the peer)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._loop = asyncio.get_running_loop()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            fut = self._loop.create_future()
            self._loop.add_writer(self.fd, _wake, fut)
            try:
                await fut
            finally:
                self._loop.remove_writer(self.fd)


class Child:
    """A running session process and the parent's ends of its stdio."""

    def __init__(self, pid: int, stdin_fd: int, stdout_fd: int, stderr_fd: int | None,
                 pty_fd: int | None) -> None:
        self.pid = pid
        self.pgid = pid  # the child leads its own session and process group
        self.pty_fd = pty_fd
        self._fds = {fd for fd in (stdin_fd, stdout_fd, stderr_fd) if fd is not None}
        self.stdin = FdWriter(stdin_fd)
        self.stdout = FdReader(stdout_fd)
        self.stderr = FdReader(stderr_fd) if stderr_fd is not None else None
        self._stdin_fd: int | None = stdin_fd
        self.returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()

    def close_stdin(self) -> None:
        """EOF on the child's stdin (pipes only: a pty has no half-close)."""
        if self.pty_fd is None and self._stdin_fd is not None:
            fd, self._stdin_fd = self._stdin_fd, None
            self._close_fd(fd)

    def _close_fd(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.discard(fd)
            # unregister first: the selector must never watch a closed (and soon
            # reused) fd number
            loop = asyncio.get_running_loop()
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            try:
                os.close(fd)
            except OSError:
                pass

    def close_fds(self) -> None:
        for fd in list(self._fds):
            self._close_fd(fd)

    def send_signal(self, signum: int) -> None:
        """Deliver to the child only (the reference does the same)."""
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def hangup(self) -> None:
        """SIGHUP (then SIGCONT, so stopped jobs see it) to every process of the
        session: the child leads a session of its own, and a job-control shell puts
        its jobs in process groups of their own inside it."""
        targets = session_members(self.pid)
        if self.returncode is None:
            targets.add(self.pid)
        for signum in (signal.SIGHUP, signal.SIGCONT):
            for pid in targets:
                try:
                    os.kill(pid, signum)
                except (ProcessLookupError, PermissionError):
                    pass

    def _set_exit(self, status: int) -> None:
        self.returncode = status
        if not self._exited.done():
            self._exited.set_result(status)

    async def wait(self) -> int:
        """Raw wait status (as from waitpid)."""
        return await asyncio.shield(self._exited)


def session_members(sid: int) -> set[int]:
    """PIDs whose session ID is `sid` (Linux /proc; empty elsewhere)."""
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # fields after the parenthesised command name: state ppid pgrp session ...
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            found.add(int(entry))
    return found


def build_environment(user: UserInfo, term: str | None, extra: dict[str, str]) -> dict[str, str]:
    env = {
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "SHELL": user.shell,
        "PATH": DEFAULT_PATH,
    }
    if term:
        env["TERM"] = term
    env.update(extra)
    return env


def _child_setup(user: UserInfo | None, pty_slave: int | None, stdio: tuple[int, int, int],
                 cwd: str) -> None:
    """Runs in the forked child before exec: only async-signal-safe-ish calls."""
    os.setsid()
    if pty_slave is not None:
        fcntl.ioctl(pty_slave, termios.TIOCSCTTY, 0)
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    if user is not None:
        os.setgroups(os.getgrouplist(user.name, user.gid))
        os.setgid(user.gid)
        os.setuid(user.uid)
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")
    for signum in (signal.SIGPIPE, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM,
                   signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def spawn(user: UserInfo, argv: list[str], executable: str, env: dict[str, str],
          pty: PtyParams | None, switch_user: bool) -> Child:
    """Fork and exec `argv` as `user`. `switch_user` is False when the server already
    runs as that user (unprivileged mode)."""
    if pty is not None:
        master, slave = os.openpty()
        set_window_size(master, pty.columns, pty.rows, pty.pixel_width, pty.pixel_height)
        stdio = (slave, slave, slave)
        to_close_in_parent = [slave]
        parent_fds: tuple[int, int, int | None] = (master, master, None)
    else:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdio = (in_r, out_w, err_w)
        to_close_in_parent = [in_r, out_w, err_w]
        parent_fds = (in_w, out_r, err_r)
        slave = None
    for fd in parent_fds:
        if fd is not None:
            os.set_inheritable(fd, False)
    # A signal that reaches the child between fork and exec would run the server's
    # handlers there: asyncio's writes to the wakeup fd it shares with the server,
    # which would then act on it (a client's `signal INT` sent right after `exec`
    # stopped the whole server). Block signals across fork: the child unblocks them
    # at the end of _child_setup, once their dispositions are back to the defaults.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    pid = -1
    try:
        pid = os.fork()
    finally:
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if pid == 0:  # child
        try:
            signal.set_wakeup_fd(-1)
            _child_setup(user if switch_user else None, slave, stdio, user.home)
            os.closerange(3, 65536)
            os.execve(executable, argv, env)
        except BaseException as exc:  # noqa: BLE001 - report and die, never return
            try:
                os.write(2, f"ssh3-server: cannot run {executable}: {exc}\n".encode())
            finally:
                os._exit(127)
    for fd in to_close_in_parent:
        os.close(fd)
    child = Child(pid, parent_fds[0], parent_fds[1], parent_fds[2],
                  master if pty is not None else None)
    _watch(child)
    return child


def _watch(child: Child) -> None:
    """Reap the child without blocking: a pidfd where the kernel has one."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        def ready() -> None:
            try:
                _, status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                status = 255 << 8
            else:
                if _ == 0:
                    return
            loop.remove_reader(pidfd)
            os.close(pidfd)
            child._set_exit(status)

        loop.add_reader(pidfd, ready)
        return

    async def poll() -> None:  # fallback: poll (rare: kernels without pidfd)
        while True:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid:
                child._set_exit(status)
                return
            await asyncio.sleep(0.05)

    loop.create_task(poll())
