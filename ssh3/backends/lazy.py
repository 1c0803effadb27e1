"""Deferred imports of what a QUIC library imports but our use of it never runs."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class _Deferred(types.ModuleType):
    """Stands in sys.modules for a module until one of its attributes is wanted;
    then the real module is imported and takes its place (its names are copied
    here too, for those who hold this object)."""

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        for key, value in vars(real).items():
            if key not in ("__name__", "__spec__", "__loader__"):
                setattr(self, key, value)
        return getattr(real, attr)


def defer_import(name: str) -> None:
    """Make `import name` cheap until the module is used. For `service_identity`
    this saves ~20 ms per run: aioquic.tls imports it (and with it attrs, idna,
    pyOpenSSL's SSL) for host name verification, which never runs here: our
    configurations use CERT_NONE and the client pins the certificate against
    known_hosts itself. Whoever does use the module gets the real one then.

    (importlib's LazyLoader does not do here: the import statement reads
    `__spec__`, which already triggers its load.)"""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return  # not installed: let the real import fail where it is made
    stand_in = _Deferred(name)
    stand_in.__spec__ = spec
    sys.modules[name] = stand_in
