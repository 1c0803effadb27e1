"""Client side of the `env` extension: SendEnv and SetEnv (ssh_config(5)).

SendEnv patterns pick variables of the local environment; SetEnv gives NAME=VALUE
pairs outright (it wins over a SendEnv of the same name; for a name given twice the
first SetEnv wins, as every single-valued ssh_config option does). The list is sent
as `env` requests before pty-req/shell/exec, and only to a server that announced
EXT_ENV: the reference would end the conversation on an unknown request (Q2).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping

MAX_VARIABLES = 64  # the server's bound too (ssh3_server/environment.py)


class EnvError(Exception):
    pass


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern.replace("[", "[[]"))


def collect(send_env: list[str], set_env: list[str],
            environ: Mapping[str, str] | None = None) -> list[tuple[str, bytes]]:
    """The (name, value) pairs to send, in a stable order: SendEnv matches in the
    local environment's order, then SetEnv. `-NAME` in SendEnv removes earlier
    patterns matching NAME (OpenSSH 8.1+)."""
    env = os.environ if environ is None else environ
    patterns: list[str] = []
    for word in send_env:
        for pattern in word.split():
            if pattern.startswith("-"):
                patterns = [p for p in patterns if not _matches(p, pattern[1:])]
            else:
                patterns.append(pattern)
    chosen: dict[str, bytes] = {}
    fixed: dict[str, bytes] = {}
    for item in set_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise EnvError(f"bad SetEnv {item!r}: expected NAME=VALUE")
        fixed.setdefault(name, os.fsencode(value))
    for name, value in env.items():
        if name not in fixed and any(_matches(name, p) for p in patterns):
            chosen[name] = os.fsencode(value)
    chosen.update(fixed)
    pairs = list(chosen.items())
    if len(pairs) > MAX_VARIABLES:
        raise EnvError(f"SendEnv/SetEnv select {len(pairs)} variables; at most "
                       f"{MAX_VARIABLES} can be sent")
    return pairs
