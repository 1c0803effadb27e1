"""A real OpenSSH `ssh-agent` for e2e tests, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from e2e_helpers import stop_process, wait_for

HAVE_AGENT = bool(shutil.which("ssh-agent") and shutil.which("ssh-add"))


@contextlib.contextmanager
def running_agent(*keys: Path) -> Iterator[str]:
    """An ssh-agent holding *keys* (ssh-add also adds a KEY-cert.pub beside each);
    yields its socket path."""
    # a short directory: unix socket paths are limited to 108 bytes
    directory = tempfile.mkdtemp(prefix="ssh3-agent-")
    sock = os.path.join(directory, "a.sock")
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert wait_for(lambda: os.path.exists(sock), 10.0), "ssh-agent did not start"
        env = {**os.environ, "SSH_AUTH_SOCK": sock}
        for var in ("SSH_ASKPASS", "DISPLAY", "WAYLAND_DISPLAY"):
            env.pop(var, None)
        for key in keys:
            subprocess.run(["ssh-add", str(key)], env=env, check=True, timeout=30,
                           stdin=subprocess.DEVNULL, capture_output=True,
                           start_new_session=True)
        yield sock
    finally:
        stop_process(proc)
        shutil.rmtree(directory, ignore_errors=True)
