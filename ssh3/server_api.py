"""The server side of the library API: `server = await ssh3.listen(...)`.

    class Hooks(ssh3.ServerHooks):
        async def authenticate(self, attempt):
            if attempt.public_key(TRUSTED_KEYS):
                return attempt.accept()  # a session as the server's own user
            return None

    async with ssh3.listen("127.0.0.1", 4433, hooks=Hooks()) as server:
        await server.wait_closed()

It is `ssh3-server` itself (ssh3_server.server.SSH3Server, which the program builds
through this same entry); see docs/library.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssh3_server.hooks import LoginAttempt, ServerHooks, SessionInfo
from ssh3_server.server import ServerConfig, SSH3Server

from ._awaitable import AwaitableContext

__all__ = ["listen", "Server", "ServerHooks", "LoginAttempt", "SessionInfo", "ServerConfig"]


class Server:
    """A listening SSH3 server: `address`, `get_port()`, `certificate_der`,
    `close()`, `await wait_closed()`, `async with`."""

    def __init__(self, server: SSH3Server, address: tuple[str, int], certificate_der: bytes,
                 scratch: str | None) -> None:
        self._server = server
        self.address = address
        self.certificate_der = certificate_der  # what a client pins (connect(known_hosts=[...]))
        self.url_path = server.config.url_path
        self._scratch = scratch
        self._closed = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None

    def get_port(self) -> int:
        return self.address[1]

    @property
    def hooks(self) -> ServerHooks:
        return self._server.hooks

    def close(self) -> None:
        """Stop listening and end every conversation (their processes get SIGHUP)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())

    async def _close(self) -> None:
        try:
            await self._server.close()
        finally:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
            self._closed.set()

    async def wait_closed(self) -> None:
        """Until close() has finished (call it from elsewhere, e.g. a signal handler)."""
        await self._closed.wait()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


def listen(host: str = "127.0.0.1", port: int = 0, *, url_path: str = "/ssh3-term",
           cert: str | None = None, key: str | None = None,
           hooks: ServerHooks | None = None,
           server_factory: Callable[[], ServerHooks] | None = None,
           backend: str | None = None, config: ServerConfig | None = None,
           **options: Any) -> AwaitableContext[Server]:
    """Start a server on UDP `host:port` (0: any free port, see `get_port()`):
    `server = await ssh3.listen(...)`, or `async with ssh3.listen(...) as server`.

    `cert`/`key`: PEM files; when both are None a self-signed pair is made for this
    server's lifetime (`certificate_der` is what clients pin). `hooks` (or
    `server_factory()`, called once) decides authentication, forwarding and sees
    sessions start and end. `options` are ServerConfig fields (allow_tcp_forwarding,
    authorized_keys_files, idle_timeout, ...); `config` gives the whole
    configuration instead, as `ssh3-server` does.
    """

    async def start() -> Server:
        nonlocal hooks, cert, key, url_path, config
        if hooks is None and server_factory is not None:
            hooks = server_factory()
        scratch = None
        if config is None:
            if (cert is None) != (key is None):
                raise ValueError("give both cert and key, or neither (a self-signed pair)")
            if cert is None:
                from .certs import generate_self_signed

                scratch = tempfile.mkdtemp(prefix="ssh3-server-")
                cert, key = str(Path(scratch, "cert.pem")), str(Path(scratch, "key.pem"))
                generate_self_signed(cert, key)
            assert key is not None
            if not url_path.startswith("/"):
                url_path = "/" + url_path
            config = ServerConfig(bind_host=host, bind_port=port, url_path=url_path,
                                  cert_path=cert, key_path=key, backend=backend, **options)
        elif options or cert or key:
            raise ValueError("with config=, give every setting in it")
        server: SSH3Server | None = None
        try:
            server = SSH3Server(config, hooks)
            address = await server.start()
            der = _certificate_der(config.cert_path)
        except BaseException:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.close()
            raise
        return Server(server, address, der, scratch)

    return AwaitableContext(start())


def _certificate_der(path: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(Path(path).read_bytes()).public_bytes(Encoding.DER)
