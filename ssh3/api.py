"""The library API, in the shape asyncssh users know:

    async with ssh3.connect("alice@host:4433/secret") as conn:
        result = await conn.run("uname -a", check=True)
        print(result.stdout.decode())

Host certificates are checked against ~/.ssh3/known_hosts (exact pin); nothing
prompts: an unknown server is refused unless `accept_new=True` (or `insecure=True`).
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .aio.channel import ChannelClosed
from .aio.client import (
    ConnectParams,
    HostKeyError,
    Identity,
    establish,
    open_connection,
    private_key_identity,
    wait_settings,
)
from .aio.conversation import Conversation
from .auth.keys import load_private_key
from .connection import EXT_CHANNEL_EOF
from .known_hosts import KnownHosts, canonical_host, default_path, mismatch_message
from .messages import (
    ChannelData,
    ChannelExtendedData,
    ChannelOpenFailure,
    ExecRequest,
    ExitSignalRequest,
    ExitStatusRequest,
)

DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")


class ProcessError(Exception):
    """`run(..., check=True)` of a command that did not exit with status 0."""

    def __init__(self, result: CompletedProcess) -> None:
        super().__init__(f"{result.command!r} exited with status {result.returncode}: "
                         f"{result.stderr[-500:].decode('utf-8', 'replace')}")
        self.result = result


@dataclass
class CompletedProcess:
    command: str
    exit_status: int | None  # None when the process died by a signal
    exit_signal: str | None  # e.g. "TERM"
    stdout: bytes
    stderr: bytes

    @property
    def returncode(self) -> int:
        """The exit status, 128+N for signal N, 255 if neither came back."""
        if self.exit_status is not None:
            return self.exit_status
        if self.exit_signal is not None:
            import signal

            try:
                return 128 + int(signal.Signals["SIG" + self.exit_signal])
            except KeyError:
                pass
        return 255


class Connection:
    """One authenticated conversation; each `run` is a session channel of it."""

    def __init__(self, protocol: Any, conversation: Conversation) -> None:
        self._protocol = protocol
        self.conversation = conversation

    async def run(self, command: str, *, input: bytes | None = None,
                  check: bool = False) -> CompletedProcess:
        """Run `command` (`<login shell> -c command` on the server) to its end."""
        channel = self.conversation.open_channel("session")
        channel.send(ExecRequest(command.encode(), want_reply=True))
        eof_by_fin = bool(self.conversation.peer_extensions & EXT_CHANNEL_EOF)
        if input:
            await channel.write(input)
        if eof_by_fin:
            channel.send_eof()  # stdin EOF; a reference server would end the conversation
        stdout, stderr = bytearray(), bytearray()
        status: int | None = None
        sig: str | None = None
        while True:
            try:
                msg = await channel.read()
            except ChannelClosed:
                break
            if msg is None:
                break
            if isinstance(msg, ChannelData):
                stdout += msg.data
            elif isinstance(msg, ChannelExtendedData) and msg.data_type == 1:
                stderr += msg.data
            elif isinstance(msg, ExitStatusRequest):
                status = msg.exit_status
                break
            elif isinstance(msg, ExitSignalRequest):
                sig = msg.signal_name
                break
            elif isinstance(msg, ChannelOpenFailure):
                stderr += msg.message.encode()
                break
        if eof_by_fin:
            channel.send_eof()
        self._protocol.forget_channel(channel.channel_id)
        result = CompletedProcess(command, status, sig, bytes(stdout), bytes(stderr))
        if check and result.returncode != 0:
            raise ProcessError(result)
        return result


def _parse_destination(destination: str, port: int | None, path: str | None,
                       user: str | None) -> tuple[str, int, str, str]:
    url = urlsplit(destination if "://" in destination else "https://" + destination)
    if not url.hostname:
        raise ValueError(f"bad destination {destination!r}: expected [user@]host[:port][/path]")
    query_user = parse_qs(url.query).get("user", [None])[0]
    name = (unquote(url.username) if url.username else None) or query_user or user \
        or getpass.getuser()
    the_path = url.path or path or "/ssh3-term"
    return url.hostname, url.port or port or 443, the_path, name


def _identities(keys: Sequence[Any] | None) -> list[Identity]:
    explicit = keys is not None
    out: list[Identity] = []
    for item in keys if keys is not None else DEFAULT_IDENTITIES:
        if isinstance(item, str):
            path = os.path.expanduser(item)
            if not explicit and not os.path.exists(path):
                continue
            out.append(private_key_identity(path, load_private_key(path)))
        else:
            out.append(private_key_identity(type(item).__name__, item))
    return out


@contextlib.asynccontextmanager
async def connect(destination: str, *, port: int | None = None, path: str | None = None,
                  username: str | None = None, client_keys: Sequence[Any] | None = None,
                  known_hosts: str | None = None, accept_new: bool = False,
                  insecure: bool = False, backend: str | None = None,
                  connect_timeout: float = 15.0) -> AsyncIterator[Connection]:
    """Connect and authenticate to `[user@]host[:port][/path]`.

    `client_keys`: key file paths or private keys (default: ~/.ssh/id_ed25519, id_ecdsa,
    id_rsa that exist). Raises `ssh3.aio.client.SSH3ClientError` subclasses on
    failure (HostKeyError, AuthenticationFailed, ServerNotFound, …)."""
    host, the_port, the_path, user = _parse_destination(destination, port, path, username)
    known_path = os.path.expanduser(known_hosts or default_path())
    canonical = canonical_host(host, the_port, the_path)

    async def verify(der: bytes, chain: list[bytes] | None = None) -> None:
        known = KnownHosts.load(known_path)
        state = known.check(canonical, der)
        if state == "match":
            return
        if state == "mismatch":
            lines = [e.line_number for e in known.entries_for(canonical)]
            raise HostKeyError(mismatch_message(known_path, canonical, lines, der))
        if not accept_new:
            raise HostKeyError(f"no certificate known for {canonical} in {known_path}: pass "
                               "accept_new=True to remember it on first use")
        known.add(canonical, der)

    params = ConnectParams(host=host, port=the_port, path=the_path, user=user,
                           identities=_identities(client_keys), backend=backend,
                           insecure=insecure, verify_certificate=verify,
                           connect_timeout=connect_timeout)
    async with open_connection(params) as protocol:
        conversation = await establish(protocol, params)
        await wait_settings(protocol)
        try:
            yield Connection(protocol, conversation)
        finally:
            conversation.close()
