"""`ssh3.listen` and its hooks, in-process, with the real client library.

The defaults reproduce ssh3-server's behaviour (the whole e2e suite runs the program,
which builds its server through `listen(config=)`); these tests cover what a program
embedding the server can change."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from e2e_helpers import BACKENDS, run_async

import ssh3
from ssh3_server.permissions import Permissions

TRUSTED = Ed25519PrivateKey.generate()


class Recorder(ssh3.ServerHooks):
    """Trusts TRUSTED for any user name; records what it sees."""

    def __init__(self) -> None:
        self.started: list[ssh3.SessionInfo] = []
        self.ended: asyncio.Queue[tuple[ssh3.SessionInfo, str]] = asyncio.Queue()
        self.forwards: list[tuple[str, str, int]] = []

    async def authenticate(self, attempt: ssh3.LoginAttempt):
        if attempt.username == "crash":
            raise RuntimeError("a broken hook")
        if attempt.public_key([TRUSTED.public_key()]):
            return attempt.accept(permissions=Permissions(allow_udp_forwarding=False))
        return None

    def session_started(self, info: ssh3.SessionInfo) -> None:
        self.started.append(info)

    def session_ended(self, info: ssh3.SessionInfo, reason: str) -> None:
        self.ended.put_nowait((info, reason))

    def forward_requested(self, kind: str, host: str, port: int) -> bool:
        self.forwards.append((kind, host, port))
        return port >= 1024


async def _closed_port() -> int:
    """A local TCP port nothing listens on."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedded_server_with_a_fixed_key(backend: str, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="ssh3.auth")
    hooks = Recorder()

    async def go() -> dict[str, object]:
        out: dict[str, object] = {}
        async with ssh3.listen(hooks=hooks, backend=backend) as server:
            dest = f"nobody-here@127.0.0.1:{server.get_port()}/ssh3-term"
            pin = [server.certificate_der]
            async with ssh3.connect(dest, client_keys=[TRUSTED], known_hosts=pin,
                                    backend=backend) as conn:
                out["uid"] = (await conn.run("id -u")).stdout.strip()
                # forward_requested sees each channel; it refuses ports below 1024
                with pytest.raises(ssh3.ChannelOpenError) as refused:
                    await conn.open_connection("127.0.0.1", 1)
                out["refused"] = refused.value.message
                with pytest.raises(ssh3.ChannelOpenError) as failed:
                    await conn.open_connection("127.0.0.1", await _closed_port())
                out["failed"] = failed.value.message
                # the Permissions the hook gave: no UDP (and the hook is not asked); a
                # UDP forward reports a refused flow through the log
                report = _Waiter("ssh3.client.forwarding")
                async with conn.open_udp_forward(0, "127.0.0.1", 2) as listener:
                    await _send_udp(listener.get_port())
                    out["udp"] = await asyncio.wait_for(report.message, 10)
                report.remove()
            out["ended"] = await asyncio.wait_for(hooks.ended.get(), 10)
            for name, key in (("alice", Ed25519PrivateKey.generate()), ("crash", TRUSTED)):
                with pytest.raises(ssh3.AuthenticationFailed):
                    async with ssh3.connect(f"{name}@127.0.0.1:{server.get_port()}",
                                            client_keys=[key], known_hosts=pin,
                                            backend=backend):
                        pass
            # a refusal and a broken hook leave the server serving
            async with ssh3.connect(dest, client_keys=[TRUSTED], known_hosts=pin,
                                    backend=backend) as conn:
                out["again"] = (await conn.run("echo again")).stdout
        return out

    out = run_async(go())
    assert out["uid"] == str(os.geteuid())  # the server's own account
    assert "refused" in str(out["refused"]) and "port 1" in str(out["refused"])
    assert "connect to" in str(out["failed"])  # allowed by the hook, then really tried
    assert "administratively prohibited" in str(out["udp"])  # the hook gave no UDP
    assert [f[:2] for f in hooks.forwards] == [("tcp", "127.0.0.1")] * 2
    info, reason = out["ended"]
    assert info is hooks.started[0]
    assert (info.method, info.fingerprint[:7]) == ("publickey", "SHA256:")
    assert "closed" in reason
    assert out["again"] == "again\n"
    audit = [r.getMessage() for r in caplog.records if r.name == "ssh3.auth"]
    assert any("accepted" in m and "'nobody-here'" in m and "by the authenticate hook" in m
               for m in audit), audit
    assert any("refused" in m and "'alice'" in m for m in audit), audit
    assert any("refused" in m and "'crash'" in m for m in audit), audit


async def _send_udp(port: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port))
    transport.sendto(b"x")
    transport.close()


class _Waiter(logging.Handler):
    """The first record of a logger, as a future."""

    def __init__(self, logger: str) -> None:
        super().__init__()
        self.logger = logging.getLogger(logger)
        self.message: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.message.done():
            self.message.set_result(record.getMessage())

    def remove(self) -> None:
        self.logger.removeHandler(self)


def test_default_hooks_use_authorized_keys_and_can_be_reversed(
        user_key: Path, authorized_keys: Path, caplog: pytest.LogCaptureFixture):
    """No hooks: the server's pipeline (authorized_keys) decides; a hook calling
    default() can reverse it."""

    class Reverse(ssh3.ServerHooks):
        default_said: object = "not asked"

        async def authenticate(self, attempt: ssh3.LoginAttempt):
            self.default_said = await attempt.default()
            return None  # whatever authorized_keys says

    reverse = Reverse()

    async def go() -> tuple[str, bool]:
        async with ssh3.listen(authorized_keys_files=[str(authorized_keys)]) as server:
            dest = f"127.0.0.1:{server.get_port()}"
            async with ssh3.connect(dest, client_keys=[str(user_key)],
                                    known_hosts=[server.certificate_der]) as conn:
                whoami = (await conn.run("echo $USER")).stdout.strip()
        async with ssh3.listen(hooks=reverse,
                               authorized_keys_files=[str(authorized_keys)]) as server:
            try:
                async with ssh3.connect(f"127.0.0.1:{server.get_port()}",
                                        client_keys=[str(user_key)],
                                        known_hosts=[server.certificate_der]):
                    pass
            except ssh3.AuthenticationFailed:
                return whoami, True
        return whoami, False

    caplog.set_level(logging.INFO, logger="ssh3.auth")
    whoami, refused = run_async(go())
    assert whoami == pwd.getpwuid(os.geteuid()).pw_name
    assert refused
    assert reverse.default_said is not None  # authorized_keys accepted; the hook refused
    audit = [r.getMessage() for r in caplog.records if r.name == "ssh3.auth"]
    assert any("reversed" in m for m in audit), audit


def test_await_forms_close_and_cleanup():
    """`await ssh3.listen()` / `await ssh3.connect()` and explicit close; the
    self-signed pair made for the server is removed with it; a wrong pin is refused."""

    async def go() -> tuple[str, bool, str]:
        server = await ssh3.listen(hooks=Recorder())
        scratch = Path(server._scratch or "")
        try:
            dest = f"x@127.0.0.1:{server.get_port()}"
            conn = await ssh3.connect(dest, client_keys=[TRUSTED],
                                      known_hosts=[server.certificate_der])
            proc = await conn.create_process("cat")
            proc.stdin.write("through await\n")
            line = await proc.stdout.readline()
            conn.close()
            await conn.wait_closed()
            with pytest.raises(ssh3.HostKeyError):
                await ssh3.connect(dest, client_keys=[TRUSTED], known_hosts=[b"other"])
        finally:
            server.close()
            await server.wait_closed()
        return line, scratch.exists(), str(scratch)

    line, exists, scratch = run_async(go())
    assert line == "through await\n"
    assert scratch.startswith("/") and not exists
