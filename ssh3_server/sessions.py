"""Session channels: pty, shell, exec, signals, window changes, exit status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from ssh3.aio.channel import Channel, ChannelClosed
from ssh3.aio.conversation import Conversation
from ssh3.connection import EXT_CHANNEL_EOF, H3_REQUEST_INCOMPLETE
from ssh3.messages import (
    FORWARD_AGENT_DATA,
    ChannelData,
    ChannelExtendedData,
    ChannelOpenFailure,
    EnvRequest,
    ExecRequest,
    ExitSignalRequest,
    ExitStatusRequest,
    Message,
    PtyRequest,
    ShellRequest,
    SignalRequest,
    SubsystemRequest,
    WindowChangeRequest,
)

from .agent_forwarding import AgentForwarder
from .environment import EnvCollector
from .permissions import Permissions
from .process import Child, PtyParams, UserInfo, build_environment, set_window_size, spawn

log = logging.getLogger("ssh3.server")

# signal names a client may send (PROTOCOL.md §4.3), Linux numbering
SIGNALS = {
    name[3:]: int(getattr(signal, name))
    for name in dir(signal)
    if name.startswith("SIG") and not name.startswith("SIG_") and name.isupper()
    and isinstance(getattr(signal, name), int)
}
SIGNALS.setdefault("IOT", int(signal.SIGABRT))
SIGNALS.setdefault("CLD", int(signal.SIGCHLD))
SIGNALS.setdefault("POLL", int(signal.SIGIO))


# where distributions install OpenSSH's sftp-server (Debian, Arch, Fedora/RHEL)
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/lib/sftp-server",
                "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")


def default_subsystems() -> dict[str, str]:
    """`sftp` → the system's sftp-server, when there is one (sshd_config's usual
    `Subsystem sftp /usr/lib/openssh/sftp-server`)."""
    for path in SFTP_SERVERS:
        if os.access(path, os.X_OK):
            return {"sftp": path}
    return {}


@dataclass
class SessionContext:
    """What a session needs to know about its conversation."""

    user: UserInfo
    switch_user: bool
    peer: str  # "ip port" of the client
    local: str  # "ip port" of the server
    # read when needed: the client's SETTINGS may arrive after its CONNECT
    extensions_of_peer: Callable[[], int]
    extra_env: dict[str, str] = field(default_factory=dict)
    # ends the whole conversation (what a FIN means from a reference-style client)
    end_conversation: Callable[[str], None] | None = None
    # agent forwarding (§3.7): the conversation opens agent-connection channels;
    # None (or permissions without agent forwarding) refuses `forward-agent`, logged
    conversation: Conversation | None = None
    # what this login may do (server flags narrowed by the key's options)
    permissions: Permissions = field(default_factory=Permissions)
    # subsystem name → command line run like exec (`<shell> -c COMMAND`, as the user)
    subsystems: dict[str, str] = field(default_factory=dict)


    @property
    def peer_extensions(self) -> int:
        return self.extensions_of_peer()


class SessionError(Exception):
    pass


class Session:
    """One session channel, from LARVAL (no process yet) to the process's exit."""

    def __init__(self, channel: Channel, ctx: SessionContext) -> None:
        self.channel = channel
        self.ctx = ctx
        self.pty: PtyParams | None = None
        self.child: Child | None = None
        self._stdin_queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)
        self._tasks: set[asyncio.Task[None]] = set()
        self.exit_sent = asyncio.Event()
        self.agent: AgentForwarder | None = None
        self._pty_refused = False
        self.env = EnvCollector(ctx.permissions.accept_env,
                                f"session {channel.channel_id} of {ctx.user.name}")

    @property
    def larval(self) -> bool:
        return self.child is None

    async def run(self) -> None:
        """Serve the channel until the peer ends it or the process is done and the
        peer has gone."""
        try:
            await self._read_loop()
        except SessionError as exc:
            log.warning("session %d of %s: %s", self.channel.channel_id, self.ctx.user.name, exc)
            self.channel.reset(H3_REQUEST_INCOMPLETE)
        except ChannelClosed as exc:
            log.info("session %d of %s closed: %s", self.channel.channel_id, self.ctx.user.name,
                     exc)
        finally:
            await self.terminate()

    async def _read_loop(self) -> None:
        while True:
            msg = await self.channel.read()
            if msg is None:
                self._on_eof()
                if self.child is None:
                    return
                # keep the output flowing until the exit status went out (or the
                # channel broke); both directions are then done
                waits = [asyncio.ensure_future(e.wait())
                         for e in (self.channel.closed, self.exit_sent)]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                if self.exit_sent.is_set() and self.ctx.peer_extensions & EXT_CHANNEL_EOF:
                    self.channel.send_eof()  # both directions done: the stream closes
                return
            await self._handle(msg)

    def _on_eof(self) -> None:
        if self.ctx.peer_extensions & EXT_CHANNEL_EOF:
            if self.child is not None:
                self._spawn(self._put_stdin(None))
        else:
            # without the extension a FIN means the client went away: like the
            # reference (§6.6), end the channel and the whole conversation
            self.channel.send_eof()
            self.channel._feed_error("client closed the session channel")
            if self.ctx.end_conversation is not None:
                self.ctx.end_conversation("client closed a session channel")

    async def _handle(self, msg: Message) -> None:
        if isinstance(msg, ChannelData):
            if self.larval:
                if msg.data == FORWARD_AGENT_DATA:
                    await self._forward_agent()
                    return
                raise SessionError("data before shell or exec")
            await self._put_stdin(msg.data)
        elif isinstance(msg, ChannelExtendedData):
            raise SessionError(f"unexpected extended data (type {msg.data_type}) from client")
        elif isinstance(msg, PtyRequest):
            if not self.larval or self.pty is not None or self._pty_refused:
                raise SessionError("pty-req after the session started or twice")
            if not self.ctx.permissions.allow_pty:
                # SSH3 requests have no reply (Q4): like OpenSSH's client, tell the
                # user on stderr when the session starts, and go on without a pty
                log.info("session %d of %s from %s: pty-req refused (no-pty)",
                         self.channel.channel_id, self.ctx.user.name, self.ctx.peer)
                self._pty_refused = True
                return
            self.pty = PtyParams(msg.term, msg.char_width, msg.char_height, msg.pixel_width,
                                 msg.pixel_height)
        elif isinstance(msg, ShellRequest | ExecRequest | SubsystemRequest):
            if not self.larval:
                raise SessionError("a second shell/exec/subsystem request")
            self._start(msg)
        elif isinstance(msg, WindowChangeRequest):
            if self.pty is not None and self.child is not None and self.child.pty_fd is not None:
                # the kernel signals SIGWINCH to the foreground process group itself
                set_window_size(self.child.pty_fd, msg.char_width, msg.char_height,
                                msg.pixel_width, msg.pixel_height)
            elif self.pty is not None:
                self.pty.columns, self.pty.rows = msg.char_width, msg.char_height
        elif isinstance(msg, EnvRequest):
            # like sshd: only before the process starts, only names AcceptEnv allows
            if self.larval:
                self.env.offer(msg.name, msg.value)
            else:
                log.debug("session %d: env %r after the session started: ignored",
                          self.channel.channel_id, msg.name)
        elif isinstance(msg, SignalRequest):
            if self.child is None:
                raise SessionError("signal before the session started")
            signum = SIGNALS.get(msg.signal_name)
            if signum is None:
                raise SessionError(f"unknown signal {msg.signal_name!r}")
            self.child.send_signal(signum)
        elif isinstance(msg, ChannelOpenFailure):
            raise SessionError("channel open failure sent by the opener")
        else:
            raise SessionError(f"unexpected {type(msg).__name__} on a session channel")

    async def _forward_agent(self) -> None:
        """Set up the agent socket; its failure or refusal leaves the session working."""
        ctx = self.ctx
        if ctx.conversation is None or not ctx.permissions.allow_agent_forwarding:
            log.info("session %d of %s: agent forwarding requested but disabled; ignored",
                     self.channel.channel_id, ctx.user.name)
            return
        if self.agent is not None:
            return  # asked twice: one socket is enough
        owner = ctx.user.uid if ctx.switch_user else None
        agent = AgentForwarder(ctx.conversation, owner, ctx.user.gid if owner is not None
                               else None, ctx.user.name)
        try:
            path = await agent.start()
        except OSError as exc:
            log.warning("session %d of %s: cannot set up agent forwarding: %s",
                        self.channel.channel_id, ctx.user.name, exc)
            return
        self.agent = agent
        log.debug("session %d: SSH_AUTH_SOCK=%s", self.channel.channel_id, path)

    def _start(self, msg: ShellRequest | ExecRequest | SubsystemRequest) -> None:
        user = self.ctx.user
        shell = user.shell
        original: str | None = None  # what the client asked for, when a command is forced
        if isinstance(msg, ShellRequest):
            argv = ["-" + os.path.basename(shell)]
            what = "shell"
        elif isinstance(msg, ExecRequest):
            original = os.fsdecode(msg.command)
            argv = [shell, "-c", original]
            what = f"exec {msg.command[:200]!r}"
        else:
            command = self.ctx.subsystems.get(msg.name)
            if not command:
                # reset: the client reports the refusal (no replies exist, Q4)
                raise SessionError(f"subsystem {msg.name!r} refused: not configured "
                                   f"(known: {', '.join(sorted(self.ctx.subsystems)) or 'none'})")
            original = command  # sshd: the subsystem's command line
            argv = [shell, "-c", command]
            what = f"subsystem {msg.name!r} ({command})"
        forced = self.ctx.permissions.forced_command
        forced_env: dict[str, str] = {}
        if forced is not None:
            # command= / force-command: runs instead, the request in SSH_ORIGINAL_COMMAND
            log.info("session %d of %s: forced command replaces %s", self.channel.channel_id,
                     user.name, what)
            argv = [shell, "-c", forced]
            what = f"forced command {forced[:200]!r}"
            if original is not None:
                forced_env["SSH_ORIGINAL_COMMAND"] = original
        if self._pty_refused:
            self.channel.send(ChannelExtendedData(1, b"PTY allocation request failed\r\n"))
        env = build_environment(user, self.pty.term if self.pty else None, {
            # the client's (filtered: a protected name only if accepted literally),
            # then the key's environment= (only kept when the server permits it),
            # then what the server sets itself, which wins
            **self.env.accepted,
            **dict(self.ctx.permissions.environment),
            "SSH3_CONNECTION": f"{self.ctx.peer} {self.ctx.local}",
            **self.ctx.extra_env,
            **forced_env,
            **({"SSH_AUTH_SOCK": self.agent.path} if self.agent and self.agent.path else {}),
        })
        try:
            self.child = spawn(user, argv, shell, env, self.pty, self.ctx.switch_user)
        except OSError as exc:
            raise SessionError(f"cannot start {what}: {exc}") from exc
        log.info("session %d: %s for %s (pid %d%s)", self.channel.channel_id, what, user.name,
                 self.child.pid, ", pty" if self.pty else "")
        self._spawn(self._stdin_pump())
        self._spawn(self._output_and_exit())

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put_stdin(self, data: bytes | None) -> None:
        await self._stdin_queue.put(data)

    async def _stdin_pump(self) -> None:
        assert self.child is not None
        child = self.child
        while True:
            data = await self._stdin_queue.get()
            if data is None:
                child.close_stdin()
                return
            try:
                await child.stdin.write(data)
            except OSError:
                # the process closed its stdin; like OpenSSH, discard further input
                pass

    async def _pump(self, reader: object, data_type: int | None) -> None:
        while True:
            data = await reader.read()  # type: ignore[attr-defined]
            if not data:
                return
            await self.channel.write(data, data_type)

    async def _output_and_exit(self) -> None:
        child = self.child
        assert child is not None
        try:
            if child.pty_fd is not None:
                await self._pump_pty(child)
            else:
                # pipes: like OpenSSH, wait for EOF on both (all output delivered)
                pumps = [self._pump(child.stdout, None)]
                if child.stderr is not None:
                    pumps.append(self._pump(child.stderr, 1))
                await asyncio.gather(*pumps)
            status = await child.wait()
            self._send_exit(status)
        except ChannelClosed:
            return
        except OSError as exc:
            log.warning("session %d: output error: %s", self.channel.channel_id, exc)
            return
        finally:
            child.close_fds()

    async def _pump_pty(self, child: Child) -> None:
        """Relay the pty until the session's process exits, then what it left in the
        pty buffer; background jobs still holding the terminal do not keep the
        session open (they get SIGHUP, as under OpenSSH)."""
        exited = asyncio.ensure_future(child.wait())
        read: asyncio.Future[bytes] | None = None
        try:
            while True:
                read = asyncio.ensure_future(child.stdout.read())
                await asyncio.wait({read, exited}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await read
                if read.done() and not read.cancelled():
                    data = read.result()
                    if not data:
                        return
                    await self.channel.write(data)
                if exited.done():
                    break
            while True:
                data = child.stdout.read_now()
                if not data:
                    break
                await self.channel.write(data)
            child.hangup()
        finally:
            exited.cancel()
            # a read still waiting holds the pty fd in the event loop's selector:
            # it must go before the fd is closed (else a reused fd number is deaf)
            if read is not None and not read.done():
                read.cancel()

    def _send_exit(self, status: int) -> None:
        # exit-status/-signal end in a varint: never FIN right behind them (Q7);
        # the client ends the channel
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            try:
                name = signal.Signals(signum).name[3:]
            except ValueError:
                name = str(signum)
            msg: Message = ExitSignalRequest(name, bool(os.WCOREDUMP(status)),
                                             f"killed by signal {signum}")
            log.info("session %d: process killed by SIG%s", self.channel.channel_id, name)
        else:
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 255
            msg = ExitStatusRequest(code)
            log.info("session %d: process exited with %d", self.channel.channel_id, code)
        self.channel.send(msg)
        self.exit_sent.set()

    async def terminate(self) -> None:
        """The channel is over: hang up the process group and stop our tasks."""
        if self.agent is not None:
            self.agent.close()  # the socket goes with its session
        if self.child is not None and self.child.returncode is None:
            self.child.hangup()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.child is not None:
            self.child.close_fds()
            if self.child.pty_fd is None and self.child.returncode is None:
                self.child.hangup()
