"""What the command line asks of the session: the command, whether a pty is wanted,
and the environment to send. The same for a run over its own connection (cli.py)
and one handed to a live master (mux_cli.py), so both read it here. Only light
modules are imported: a multiplexed run must start fast.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    from typing import Any


def session_basics(args: Any) -> tuple[bytes | None, bool, list[tuple[str, bytes]]] | int:
    """(command, pty, env) from the command line; 255 (with the message printed)
    when -s has no subsystem name or SendEnv/SetEnv is bad."""
    from .environment import EnvError, collect

    command = " ".join(args.command).encode() if args.command else None
    pty = (command is None and os.isatty(0) and not args.null_stdin) or args.force_tty
    if args.no_tty:
        pty = False
    if args.subsystem and command is None:
        print("ssh3: -s needs a subsystem name", file=sys.stderr)
        return 255
    try:
        env = collect(args.send_env, args.set_env)
    except EnvError as exc:
        print(f"ssh3: {exc}", file=sys.stderr)
        return 255
    return command, pty, env
