"""SSH3 (SSH over HTTP/3): protocol library. `ssh3.connect` is the high-level client
API (see ssh3/api.py); it is imported on first use so that `import ssh3` stays cheap."""

from __future__ import annotations

from typing import Any

__all__ = ["connect", "Connection", "CompletedProcess", "ProcessError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ssh3' has no attribute {name!r}")
