"""Where `ssh3` (ssh3_client/cli.py) meets multiplexing, before asyncio is imported.

`before_connect` runs right after the arguments and the configuration are read:
`-O` commands, a session handed to a live master, or (ControlPersist) the fork of
a background master whose readiness the foreground process waits for before it
becomes that master's first client. It returns an exit code, or None when the run
goes on over its own connection (as a master if `args.mux` says so). Only light
modules are imported here: a multiplexed run must start fast.
"""

from __future__ import annotations

import os
import sys

from . import mux_client
from .session_args import session_basics

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    from typing import Any


def _needs_own_connection(args: Any) -> bool:
    # forwardings, -N and -W are not handed to a master (docs/multiplexing.md)
    return bool(args.forwards or args.dynamic or args.no_command
                or args.stdio_forward is not None)


def _session_fields(args: Any, host: str) -> tuple[list[tuple[bytes, bytes]], bool] | int:
    basics = session_basics(args)
    if isinstance(basics, int):
        return basics
    command, pty, env = basics
    fields = mux_client.session_fields(
        command, pty, os.environ.get("TERM", ""), host, forward_agent=args.forward_agent,
        subsystem=args.subsystem, quiet=args.quiet, escape=args.escape_char, env=env)
    return fields, pty


def _as_client(args: Any, path: str, host: str) -> int | None:
    built = _session_fields(args, host)
    if isinstance(built, int):
        return built
    fields, pty = built
    stdin_fd = os.open(os.devnull, os.O_RDONLY) if args.null_stdin else 0
    try:
        return mux_client.run_session(path, fields, stdin_fd=stdin_fd, pty=pty)
    finally:
        if stdin_fd != 0:
            os.close(stdin_fd)


def before_connect(args: Any, host: str) -> int | None:
    try:
        plan = mux_client.plan(args.options, args.master)
    except ValueError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return 255
    if args.mux_command:
        if plan.path is None:
            print('ssh3: No ControlPath specified for "-O" command', file=sys.stderr)
            return 255
        return mux_client.control_command(plan.path, args.mux_command)
    if plan.path is None:
        return None
    own = _needs_own_connection(args)
    if plan.master != "yes" and not own:
        code = _as_client(args, plan.path, host)
        if code is not None:
            return code
    if plan.master == "no":
        return None
    args.mux = plan  # this run becomes the master
    if plan.persist is None or (own and not args.no_command):
        return None  # a foreground master (forwardings stay in the foreground too)
    return _fork_background_master(args, plan.path, host)


def _fork_background_master(args: Any, path: str, host: str) -> int | None:
    """ControlPersist: the child connects (prompts still reach the terminal), listens,
    says "R" on a pipe and detaches; the parent then runs its session through it."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        args.mux_ready_fd = write_fd  # cli._run: notify, then detach
        return None
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        state = ready.read(1)
    if state != b"R":
        # "F": it cannot be a master, so it runs the session itself in the foreground;
        # nothing: it failed (and said why on stderr). Either way its status is ours.
        import signal

        for signum in (signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_IGN)  # the child, in our group, gets them
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code
    if args.no_command:
        return 0  # `-N` with ControlPersist: the master is all that was asked for
    code = _as_client(args, path, host)
    if code is None:
        args.mux = None
        return None
    return code


def detach(ready_fd: int, ok: bool) -> None:
    """The background master is listening (ok) or cannot (not ok): tell the
    foreground process, then leave its terminal."""
    try:
        os.write(ready_fd, b"R" if ok else b"F")
    finally:
        os.close(ready_fd)
    if not ok:
        return
    os.setsid()
    os.chdir("/")  # hold no directory busy (paths in use are absolute by now)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def fast_exit(code: int) -> None:
    """Leave without the interpreter's teardown (~3 ms of a ~30 ms multiplexed run):
    this process holds nothing to clean up once the master has run its session."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
