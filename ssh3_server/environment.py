"""Server side of the `env` extension (EXT_ENV): which variables a client may set.

sshd's AcceptEnv semantics: a client-sent name is kept only when it matches one of
the server's patterns (`*` and `?` wildcards, case-sensitive as environment names
are). Default "LANG LC_*" like Debian's sshd_config. Variables the server itself
sets for the login (USER, HOME, PATH, SHELL, ...) are overridden only when a pattern
names them literally: a broad `*` never lets a client replace PATH by accident.
The count and size of what one session may send are bounded.
"""

from __future__ import annotations

import fnmatch
import logging
import os

log = logging.getLogger("ssh3.server.env")

DEFAULT_ACCEPT_ENV: tuple[str, ...] = ("LANG", "LC_*")
MAX_VARIABLES = 64  # accepted per session; beyond, requests are refused (logged)
MAX_NAME = 256
MAX_VALUE = 16384
MAX_TOTAL = 65536  # bytes of names + values accepted per session
# set by the server for every login: only a literal AcceptEnv entry overrides them
PROTECTED = frozenset({"USER", "LOGNAME", "HOME", "SHELL", "PATH", "MAIL", "TERM",
                       "SSH3_CONNECTION", "SSH_AUTH_SOCK", "SSH_CONNECTION",
                       "SSH_CLIENT", "LD_PRELOAD", "LD_LIBRARY_PATH"})


def parse_accept_env(text: str) -> tuple[str, ...]:
    """`-accept-env "LANG LC_* FOO"` → patterns; commas separate too; "" accepts none."""
    return tuple(p for p in text.replace(",", " ").split() if p)


def accepts(patterns: tuple[str, ...], name: str) -> bool:
    if name in PROTECTED:
        return name in patterns  # literal only
    return any(fnmatch.fnmatchcase(name, p.replace("[", "[[]")) for p in patterns)


class EnvCollector:
    """The variables one session's client asked for, filtered and bounded."""

    def __init__(self, patterns: tuple[str, ...], label: str = "session") -> None:
        self.patterns = patterns
        self.label = label
        self.accepted: dict[str, str] = {}
        self._total = 0

    def offer(self, name: str, value: bytes) -> bool:
        """Keep `name=value` if policy allows; False (logged at debug) otherwise."""
        reason = self._refusal(name, value)
        if reason is not None:
            log.debug("%s: env %r refused: %s", self.label, name[:MAX_NAME], reason)
            return False
        text = os.fsdecode(value)
        previous = self.accepted.get(name)
        if previous is not None:
            self._total -= len(name) + len(os.fsencode(previous))
        self.accepted[name] = text
        self._total += len(name) + len(value)
        log.debug("%s: env %s accepted", self.label, name)
        return True

    def _refusal(self, name: str, value: bytes) -> str | None:
        if not name or "=" in name or "\0" in name or len(name) > MAX_NAME:
            return "not a valid variable name"
        if b"\0" in value or len(value) > MAX_VALUE:
            return "value too long or contains NUL"
        if not accepts(self.patterns, name):
            return "not accepted (-accept-env)"
        if name not in self.accepted and len(self.accepted) >= MAX_VARIABLES:
            return f"more than {MAX_VARIABLES} variables"
        if self._total + len(name) + len(value) > MAX_TOTAL:
            return f"more than {MAX_TOTAL} bytes of environment"
        return None
