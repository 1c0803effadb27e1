"""Connection multiplexing, master side: serve sessions of later `ssh3` runs.

The master listens on the ControlPath unix socket (mode 0600, bound under a
temporary name and renamed into place, so a half-made socket is never seen; the
directory must not be writable by others unless it is sticky, like /tmp). For
each session request (ssh3_client/mux_client.py describes the protocol) it sends a
new extended CONNECT on its QUIC connection: a new conversation, no new QUIC or
TLS handshake. Its JWT must be freshly signed: the `jti` binds it to the
conversation ID, which is the connection's TLS exporter and so the same for every
CONNECT on the connection, but the token lives only 10 s, so a long-lived master
cannot reuse the first one. The identity that succeeded first is remembered and
is the only one tried (a Basic password header is reused as is: it does not
expire). The session then runs with the client's own file descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ssh3.aio.client import ConnectParams, Identity, SSH3ClientError, establish

from .agent_forwarding import AgentChannels
from .mux_client import MUX_VERSION, FrameReader, decode_fields, frame, remove_stale
from .session import SessionRequest, run_session

log = logging.getLogger("ssh3.client.mux")

READ_CHUNK = 32768
MAX_CLIENTS = 64  # mux connections at once


class Remembered:
    """Which identity got the 200, to sign later conversations' tokens with."""

    def __init__(self) -> None:
        self.identity: Identity | None = None
        self.basic: str | None = None


def remember_identity(params: ConnectParams) -> tuple[ConnectParams, Remembered]:
    """`params` whose identities note which one was prepared last (the one that
    was accepted, once `establish` returns)."""
    memo = Remembered()

    def wrap(identity: Identity) -> Identity:
        async def make(user: str, conv_id: bytes) -> str:
            value = identity.make_authorization(user, conv_id)
            if not isinstance(value, str):
                value = await value
            memo.identity = identity
            memo.basic = value if value.startswith("Basic ") else None
            return value

        return Identity(identity.label, make)

    return replace(params, identities=[wrap(i) for i in params.identities]), memo


class FdReader:
    """Reads a mux client's stdin without a thread: a blocking read in a thread
    would outlive the session and steal the user's next keystrokes. The fd is
    non-blocking for the session only (its flags come back at the end); regular
    files, which epoll refuses, are read directly (they never block for long)."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.fd = fd
        self._loop = loop
        self._flags: int | None = None
        self._pollable = True

    def start(self) -> None:
        try:
            self._flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags | os.O_NONBLOCK)
        except OSError:
            self._flags = None

    def restore(self) -> None:
        if self._flags is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)
            self._flags = None

    async def read(self) -> bytes:
        while True:
            try:
                return os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                await self._readable()
            except InterruptedError:
                continue
            except OSError:
                return b""

    async def _readable(self) -> None:
        if not self._pollable:
            await asyncio.sleep(0.05)
            return
        try:
            await wait_readable(self._loop, self.fd)
        except PermissionError:  # a regular file: readable at any time
            self._pollable = False


async def wait_readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Until `fd` is readable (PermissionError: epoll cannot watch it)."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _check_directory(path: str) -> str | None:
    """Why the socket's directory is unsafe, or None."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except OSError as exc:
        return f"{directory}: {exc.strerror}"
    sticky = bool(st.st_mode & stat.S_ISVTX)
    if st.st_mode & 0o022 and not sticky:
        return f"{directory} is writable by other users"
    if st.st_uid not in (os.getuid(), 0):
        return f"{directory} belongs to another user"
    return None


def bind_socket(path: str) -> socket.socket | None:
    """Listen at `path` (0600, atomically). None if a live master owns it or the
    place is unsafe (logged: the run goes on without multiplexing)."""
    problem = _check_directory(path)
    if problem is not None:
        log.warning("ControlPath %s: %s: multiplexing disabled", path, problem)
        return None
    if os.path.lexists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno != errno.ECONNREFUSED:
                log.warning("ControlPath %s exists and is not a socket: multiplexing "
                            "disabled", path)
                return None
            remove_stale(path)
        else:
            log.warning("ControlSocket %s already exists, disabling multiplexing", path)
            return None
        finally:
            probe.close()
    temporary = f"{path}.{os.getpid()}.{os.urandom(4).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(temporary)
        sock.listen(16)
        os.rename(temporary, path)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        log.warning("cannot listen on ControlPath %s: %s: multiplexing disabled", path,
                    exc.strerror or exc)
        return None
    finally:
        os.umask(old_umask)
    sock.setblocking(False)
    return sock


def _inode(path: str) -> int | None:
    try:
        return os.lstat(path).st_ino
    except OSError:
        return None


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class MuxMaster:
    """Accepts mux clients on `path` and runs their sessions on `protocol`."""

    def __init__(self, protocol: Any, params: ConnectParams, memo: Remembered, path: str,
                 agent_socket: str | None) -> None:
        self.protocol = protocol
        self.params = params
        self.memo = memo
        self.path = os.path.abspath(path)  # a background master leaves its cwd
        self.agent_socket = agent_socket
        self._listener: socket.socket | None = None
        self._inode: int | None = None  # of our socket file (a newer one is not ours)
        self._spare: asyncio.Task[Any] | None = None  # the next client's conversation
        self._loop = asyncio.get_running_loop()
        self._clients: set[asyncio.Task[None]] = set()
        self.sessions = 0  # running now
        self.sessions_served = 0
        self.changed = asyncio.Event()  # a session started or ended, or exit was asked
        self.exit_requested = False

    # ------------------------------------------------------------ listening

    def listen(self) -> bool:
        self._listener = bind_socket(self.path)
        if self._listener is None:
            return False
        self._inode = _inode(self.path)
        self._loop.add_reader(self._listener.fileno(), self._accept)
        self._prepare_spare()
        log.debug("multiplexing master listening on %s", self.path)
        return True

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def stop_listening(self) -> None:
        if self._listener is None:
            return
        self._loop.remove_reader(self._listener.fileno())
        # only our own socket: a newer master may have replaced it meanwhile
        if self._inode is not None and _inode(self.path) == self._inode:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._listener.close()
        self._listener = None

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        if len(self._clients) >= MAX_CLIENTS:
            log.warning("multiplexing: %d clients already; refusing one", MAX_CLIENTS)
            conn.close()
            return
        task = asyncio.ensure_future(self._serve_client(conn))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    # ------------------------------------------------------------ one client

    async def _recv(self, conn: socket.socket) -> tuple[bytes, list[int]]:
        """Bytes (b"" at EOF) and any passed fds, without blocking the loop."""
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
                return data, list(fds)
            except BlockingIOError:
                await wait_readable(self._loop, conn.fileno())
            except InterruptedError:
                continue
            except OSError:
                return b"", []

    async def _serve_client(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        fds: list[int] = []
        try:
            uid = _peer_uid(conn)
            if uid not in (os.getuid(), 0):
                log.warning("multiplexing: connection from uid %d refused", uid)
                return
            reader = FrameReader()
            while True:
                data, new_fds = await self._recv(conn)
                fds += new_fds
                if len(fds) > 3:
                    raise ValueError("more file descriptors than a session takes")
                if not data:
                    return
                for kind, payload in reader.feed(data):
                    if kind in (b"C", b"X", b"T"):
                        conn.sendall(frame(b"P", struct.pack(">I", os.getpid())))
                        if kind != b"C":
                            log.debug("multiplexing: %s requested", "exit" if kind == b"X"
                                      else "stop")
                            self.stop_listening()
                            self.exit_requested = kind == b"X"
                            self.changed.set()
                        continue
                    if kind == b"S":
                        taken, fds = fds, []
                        await self._session(conn, reader, payload, taken)
                        return
                    raise ValueError(f"unexpected mux frame {kind!r}")
        except (ValueError, ConnectionError) as exc:
            log.debug("multiplexing client: %s", exc)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            conn.close()

    async def _session(self, conn: socket.socket, reader: FrameReader, payload: bytes,
                       fds: list[int]) -> None:
        try:
            await self._run_session(conn, reader, payload, fds)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _run_session(self, conn: socket.socket, reader: FrameReader, payload: bytes,
                           fds: list[int]) -> None:
        try:
            if len(fds) != 3:
                raise ValueError("a session request needs three file descriptors")
            fields = dict(decode_fields(payload))
            if fields.get(b"version") != MUX_VERSION:
                conn.sendall(frame(b"N"))  # another version: the client connects itself
                return
            request = request_from_fields(fields)
        except ValueError as exc:
            conn.sendall(frame(b"F", f"ssh3: multiplexing: {exc}".encode()))
            return
        conv = await self._open_conversation()
        if conv is None:
            conn.sendall(frame(b"N"))
            return
        self.sessions += 1
        self.sessions_served += 1
        self.changed.set()
        stdin = FdReader(fds[0], self._loop)
        resize: list[Callable[[], None] | None] = [None]
        AgentChannels(conv, request.forward_agent, self.agent_socket)
        session = asyncio.ensure_future(run_session(
            conv, request, stdin_fd=fds[0], stdout_fd=fds[1], stderr_fd=fds[2],
            stdin_reader=stdin, on_resize=lambda fn: resize.__setitem__(0, fn)))
        watcher = asyncio.ensure_future(self._watch(conn, reader, resize))
        code = 255
        try:
            await asyncio.wait({session, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if session.done():
                code = session.result()
            else:  # the client went away (killed): end its session
                log.debug("multiplexing client gone: ending its session")
                session.cancel()
                with contextlib.suppress(BaseException):
                    await session
        except Exception as exc:  # noqa: BLE001 - one session must not stop the master
            log.debug("multiplexed session failed: %r", exc)
        finally:
            watcher.cancel()
            stdin.restore()
            conv.close()
            self.protocol.transmit_soon()
            with contextlib.suppress(OSError):
                conn.setblocking(True)
                conn.sendall(frame(b"E", struct.pack(">i", code)))
            self.sessions -= 1
            self.changed.set()

    async def _watch(self, conn: socket.socket, reader: FrameReader,
                     resize: list[Callable[[], None] | None]) -> None:
        """Window changes from the client; returns when it disconnects."""
        while True:
            data, fds = await self._recv(conn)
            for fd in fds:  # nobody asked for more
                os.close(fd)
            if not data:
                return
            for kind, _payload in reader.feed(data):
                if kind == b"W" and resize[0] is not None:
                    resize[0]()

    def _prepare_spare(self) -> None:
        """Authenticate the next client's conversation ahead of time: the CONNECT
        round trip and the server's key check leave its critical path."""
        if self._spare is None and self.listening and not self.protocol.terminated.is_set():
            self._spare = asyncio.ensure_future(self._establish())

    async def _open_conversation(self) -> Any:
        spare, self._spare = self._spare, None
        conv = None
        if spare is not None:
            with contextlib.suppress(Exception):
                conv = await spare
            if conv is not None and conv.ended.is_set():
                conv = None
        if conv is None:
            conv = await self._establish()
        self._prepare_spare()
        return conv

    async def _establish(self) -> Any:
        if self.protocol.terminated.is_set() or self.memo.identity is None:
            return None
        identity = self.memo.identity
        if self.memo.basic is not None:
            basic = self.memo.basic
            identity = Identity(identity.label, lambda _u, _c: basic)
        try:
            return await establish(self.protocol, replace(self.params, identities=[identity]))
        except SSH3ClientError as exc:
            log.debug("multiplexing: cannot open a conversation: %s", exc)
            return None

    # ------------------------------------------------------------ lifetime

    async def serve_until_idle(self, persist: float) -> int:
        """ControlPersist: run until `persist` s pass with no session, -O exit,
        or the connection dies. Returns the exit code of the daemon."""
        while not self.exit_requested and not self.protocol.terminated.is_set():
            if not self.listening and not self.sessions:
                break  # -O stop: no one can come any more
            self.changed.clear()
            timeout = None if self.sessions or persist == float("inf") else persist
            waits = {asyncio.ensure_future(self.changed.wait()),
                     asyncio.ensure_future(self.protocol.terminated.wait())}
            try:
                done, _ = await asyncio.wait(waits, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if not done:
                log.debug("multiplexing master idle for %.0f s: exiting", persist)
                break
        await self.close()
        return 0

    async def finish(self) -> None:
        """The master's own session ended: accept no more clients; the running
        ones finish first (or -O exit / the connection ending cuts them)."""
        self.stop_listening()
        while self.sessions and not self.exit_requested \
                and not self.protocol.terminated.is_set():
            self.changed.clear()
            waits = {asyncio.ensure_future(self.changed.wait()),
                     asyncio.ensure_future(self.protocol.terminated.wait())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        await self.close()

    async def close(self) -> None:
        self.stop_listening()
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.cancel()
            with contextlib.suppress(BaseException):
                conv = await spare
                if conv is not None:
                    conv.close("multiplexing master closing")
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)


def request_from_fields(fields: dict[bytes, bytes]) -> SessionRequest:
    """The SessionRequest a mux client asked for (ValueError if malformed)."""
    from .escape import parse_escape_char

    def text(key: bytes) -> str:
        return os.fsdecode(fields.get(key, b""))

    env = []
    for key, value in fields.items():
        if key.startswith(b"env:"):
            env.append((key[4:].decode("utf-8", "surrogateescape"), value))
    escape = fields.get(b"escape")
    return SessionRequest(
        command=fields.get(b"command"),
        pty=fields.get(b"pty") == b"1",
        term=text(b"term"),
        forward_agent=fields.get(b"forward_agent") == b"1",
        subsystem=fields.get(b"subsystem") == b"1",
        escape_char=parse_escape_char(None if escape is None else os.fsdecode(escape)),
        host=text(b"host"),
        quiet=fields.get(b"quiet") == b"1",
        env=env,
    )


class MuxRole:
    """What cli._run does as a ControlMaster (`args.mux` set by mux_cli): listen
    once authenticated, then either serve in the background (ControlPersist) or
    run its own session and wait for the multiplexed ones before exiting."""

    def __init__(self, args: Any, params: ConnectParams) -> None:
        self.plan = args.mux
        self.ready_fd: int | None = args.mux_ready_fd
        self.params = params
        self.memo = Remembered()
        if self.plan is not None:
            self.params, self.memo = remember_identity(params)
        self.master: MuxMaster | None = None

    async def __aenter__(self) -> MuxRole:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.master is not None:
            await self.master.close()

    async def start(self, protocol: Any, conv: Any, agent_socket: str | None) -> bool:
        """Listen if this run is a master; True for a background master, whose
        work is `serve()` instead of a session."""
        if self.plan is None:
            return False
        self.master = MuxMaster(protocol, self.params, self.memo, self.plan.path,
                                agent_socket)
        if protocol.connection.peer_extensions:
            ok = self.master.listen()
        else:
            # a server announcing no extension is the reference: one conversation per
            # connection (Q11), a second CONNECT would break the first one
            log.debug("the server is not ssh3-py (no extensions announced): "
                      "multiplexing disabled")
            ok = False
        if self.ready_fd is None:
            return False
        from .mux_cli import detach

        detach(self.ready_fd, ok)
        self.ready_fd = None
        if not ok:
            return False  # no master after all: run the session here, in the foreground
        # no terminal any more: ~^Z in a multiplexed session must not stop us
        import signal

        for signum in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)
        conv.close()  # the background master needs no session of its own
        return True

    async def serve(self) -> int:
        assert self.master is not None and self.plan is not None
        if not self.master.listening:
            return 0  # the foreground process connects by itself
        return await self.master.serve_until_idle(self.plan.persist)

    async def after(self, work: Any) -> int:
        """Run the master's own work; then wait for the multiplexed sessions.
        `-O exit` ends the own work too (OpenSSH's master exits)."""
        if self.master is None or not self.master.listening:
            return await work
        task = asyncio.ensure_future(work)
        master = self.master
        while not task.done() and not master.exit_requested:
            master.changed.clear()
            changed = asyncio.ensure_future(master.changed.wait())
            try:
                await asyncio.wait({task, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await master.close()
            return 255
        code = task.result()
        await master.finish()
        return code
