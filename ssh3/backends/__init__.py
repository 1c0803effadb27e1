"""The QUIC seam: one adapter per QUIC library, chosen by name.

Everything above this package talks to a QUIC library only through the `Backend`
object returned by `get_backend`, so adding a library is one new adapter module.
"""

from __future__ import annotations

import importlib
import os

from .base import Backend

BACKENDS = ("aioquic", "qh3")
DEFAULT_BACKEND = "aioquic"

_loaded: dict[str, Backend] = {}


def default_backend_name() -> str:
    return os.environ.get("SSH3_QUIC_BACKEND", DEFAULT_BACKEND)


def get_backend(name: str | None = None) -> Backend:
    """Return the adapter for `name` (default: $SSH3_QUIC_BACKEND or aioquic)."""
    name = name or default_backend_name()
    if name not in BACKENDS:
        raise ValueError(f"unknown QUIC backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name not in _loaded:
        try:
            module = importlib.import_module(f".{name}_backend", __name__)
        except ImportError as exc:
            hint = " (pip install 'ssh3[fast]')" if name == "qh3" else ""
            raise ValueError(f"QUIC backend {name!r} is not installed{hint}: {exc}") from exc
        _loaded[name] = module.make_backend()
    return _loaded[name]


__all__ = ["Backend", "BACKENDS", "DEFAULT_BACKEND", "get_backend", "default_backend_name"]
