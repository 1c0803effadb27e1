"""SSH3 (SSH over HTTP/3): protocol library and asyncssh-style API.

`ssh3.connect(...)` (client, ssh3/api.py) and `ssh3.listen(...)` (server,
ssh3/server_api.py) are imported on first use so that `import ssh3` stays cheap.
See docs/library.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_LAZY = {
    "connect": "api",
    "Connection": "api",
    "Listener": "api",
    "SSH3ClientProcess": "client_process",
    "CompletedProcess": "client_process",
    "ProcessError": "client_process",
    "ChannelOpenError": "client_process",
    "SSH3ClientError": "aio.client",
    "HostKeyError": "aio.client",
    "AuthenticationFailed": "aio.client",
    "listen": "server_api",
    "Server": "server_api",
    "ServerHooks": "server_api",
    "LoginAttempt": "server_api",
    "SessionInfo": "server_api",
}

__all__ = [
    "AuthenticationFailed", "ChannelOpenError", "CompletedProcess", "Connection",
    "HostKeyError", "Listener", "LoginAttempt", "ProcessError", "SSH3ClientError",
    "SSH3ClientProcess", "Server", "ServerHooks", "SessionInfo", "connect", "listen",
]

if TYPE_CHECKING:  # type checkers see the real names; nothing is imported at runtime
    from .aio.client import AuthenticationFailed, HostKeyError, SSH3ClientError
    from .api import Connection, Listener, connect
    from .client_process import (
        ChannelOpenError,
        CompletedProcess,
        ProcessError,
        SSH3ClientProcess,
    )
    from .server_api import LoginAttempt, Server, ServerHooks, SessionInfo, listen


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ssh3' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
