"""A small ssh-agent client: list the agent's keys, have it sign a JWT (PROTOCOL.md §2.4.2).

Why hand-written rather than a library.  The project prefers a well-kept
library, and two were measured (Python 3.11, best of 5, on top of what
``ssh3`` already imports: aioquic, cryptography, pyjwt, bcrypt):

* ``asyncssh`` (``connect_agent``): +80 ms to import (170 ms alone);
* ``paramiko`` (``paramiko.Agent``, synchronous): +44 ms (88 ms alone).

The whole client is meant to start in well under 150 ms, so either would cost
a third to a half of that budget on every login that uses an agent (the
common case), and each drags in a second SSH stack and crypto layer of its
own.  What ``ssh3`` needs is four messages of draft-miller-ssh-agent:
REQUEST_IDENTITIES (11) / IDENTITIES_ANSWER (12), SIGN_REQUEST (13) /
SIGN_RESPONSE (14), and FAILURE (5), each a ``uint32`` length and a payload
over a unix socket.  This module is that subset and no more; it imports only
the standard library (about 1 ms), and it is bounded: every reply is capped at
``MAX_MESSAGE_SIZE``, every exchange has a timeout, and a malformed reply is an
:class:`AgentError`, never a crash or a hang.

The agent's signatures are turned into JWS form here:

* ``ssh-ed25519``: the 64-byte raw signature is already the EdDSA JWS form;
* ``ssh-rsa``: signed with ``SSH_AGENT_RSA_SHA2_256`` so the agent answers
  ``rsa-sha2-256`` with the raw PKCS#1 v1.5 signature (RS256);
* ``ecdsa-sha2-nistp256/384``: the agent returns ``mpint r, mpint s``; JWS wants
  fixed-width ``r || s`` (32 or 48 bytes each) for ES256/ES384.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

SSH_AGENT_FAILURE = 5
SSH2_AGENTC_REQUEST_IDENTITIES = 11
SSH2_AGENT_IDENTITIES_ANSWER = 12
SSH2_AGENTC_SIGN_REQUEST = 13
SSH2_AGENT_SIGN_RESPONSE = 14
# other failure codes OpenSSH also treats as "failure" (ssh.com agents)
_FAILURE_CODES = frozenset({SSH_AGENT_FAILURE, 30, 102})

SSH_AGENT_RSA_SHA2_256 = 2

# An identities answer with a few dozen RSA keys is a few KiB; OpenSSH's own
# limit is 256 KiB (AGENT_MAX_LEN) too.
MAX_MESSAGE_SIZE = 256 * 1024
CONNECT_TIMEOUT = 5.0
LIST_TIMEOUT = 10.0
# a key added with `ssh-add -c` waits for the user to confirm each signature
SIGN_TIMEOUT = 60.0

# key type -> (JWS alg, signature format the agent must answer with, r/s width)
_ALGORITHMS: dict[str, tuple[str, str, int]] = {
    "ssh-ed25519": ("EdDSA", "ssh-ed25519", 0),
    "ssh-rsa": ("RS256", "rsa-sha2-256", 0),
    "ecdsa-sha2-nistp256": ("ES256", "ecdsa-sha2-nistp256", 32),
    "ecdsa-sha2-nistp384": ("ES384", "ecdsa-sha2-nistp384", 48),
}


class AgentError(Exception):
    """The agent could not be reached, refused, or answered something malformed."""


class _Reader:
    """Bounds-checked reads of SSH wire types from one message."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise AgentError("malformed message from the agent (truncated)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def string(self) -> bytes:
        return self.take(self.uint32())

    def at_end(self) -> bool:
        return self.pos == len(self.data)


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def key_type_of_blob(blob: bytes) -> str:
    """The type name an SSH public key blob starts with (``ssh-ed25519``, ...)."""
    try:
        return _Reader(blob).string().decode("ascii")
    except (AgentError, UnicodeDecodeError):
        return ""


@dataclass(frozen=True)
class AgentKey:
    """One identity the agent holds: its public key blob and comment."""

    blob: bytes
    comment: str

    @property
    def key_type(self) -> str:
        return key_type_of_blob(self.blob)

    @property
    def algorithm(self) -> str | None:
        """The JWS ``alg`` this key signs with, or None if ssh3 cannot use it
        (DSA, FIDO ``sk-`` keys, certificates, ...)."""
        entry = _ALGORITHMS.get(self.key_type)
        return entry[0] if entry else None

    def openssh(self) -> str:
        """``type base64`` as in ``authorized_keys``, without comment."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def ecdsa_signature_to_jws(signature: bytes, width: int) -> bytes:
    """``mpint r, mpint s`` (the inside of an SSH ECDSA signature) to JWS ``r || s``."""
    reader = _Reader(signature)
    parts = []
    for _ in range(2):
        raw = reader.string()
        if raw and raw[0] & 0x80:
            raise AgentError("malformed ECDSA signature from the agent (negative)")
        value = int.from_bytes(raw, "big")
        try:
            parts.append(value.to_bytes(width, "big"))
        except OverflowError:
            raise AgentError("malformed ECDSA signature from the agent (too long)") from None
    if not reader.at_end():
        raise AgentError("malformed ECDSA signature from the agent (trailing data)")
    return b"".join(parts)


def signature_to_jws(key: AgentKey, ssh_signature: bytes) -> bytes:
    """An SSH signature blob (``string format, string sig``) to the JWS form of
    the key's algorithm; checks the agent used the algorithm we asked for."""
    entry = _ALGORITHMS.get(key.key_type)
    if entry is None:
        raise AgentError(f"cannot use a {key.key_type or 'unknown'} key")
    _alg, expected_format, width = entry
    reader = _Reader(ssh_signature)
    fmt = reader.string()
    raw = reader.string()
    if not reader.at_end():
        raise AgentError("malformed signature from the agent (trailing data)")
    if fmt != expected_format.encode():
        if key.key_type == "ssh-rsa" and fmt == b"ssh-rsa":
            raise AgentError("the agent signed with SHA-1 (ssh-rsa); it does not support "
                             "rsa-sha2-256")
        raise AgentError(f"the agent signed with {fmt.decode('ascii', 'replace')!r}, "
                         f"expected {expected_format!r}")
    if width:
        return ecdsa_signature_to_jws(raw, width)
    if key.key_type == "ssh-ed25519" and len(raw) != 64:
        raise AgentError("malformed Ed25519 signature from the agent")
    if not raw:
        raise AgentError("empty signature from the agent")
    return raw


class AgentConnection:
    """One connection to an ssh-agent (use :func:`connect_agent`)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def _request(self, payload: bytes, timeout: float) -> tuple[int, _Reader]:
        async def exchange() -> bytes:
            self._writer.write(_string(payload))
            await self._writer.drain()
            (length,) = struct.unpack(">I", await self._reader.readexactly(4))
            if length == 0 or length > MAX_MESSAGE_SIZE:
                raise AgentError(f"the agent sent a message of {length} bytes "
                                 f"(limit {MAX_MESSAGE_SIZE})")
            return await self._reader.readexactly(length)

        try:
            reply = await asyncio.wait_for(exchange(), timeout)
        except TimeoutError:
            raise AgentError(f"the agent did not answer within {timeout:.0f} s") from None
        except asyncio.IncompleteReadError:
            raise AgentError("the agent closed the connection") from None
        except OSError as exc:
            raise AgentError(f"agent connection failed: {exc.strerror or exc}") from exc
        reader = _Reader(reply)
        return reader.byte(), reader

    async def list_keys(self, timeout: float = LIST_TIMEOUT) -> list[AgentKey]:
        """The agent's identities, in the agent's order."""
        code, reader = await self._request(bytes([SSH2_AGENTC_REQUEST_IDENTITIES]), timeout)
        if code in _FAILURE_CODES:
            raise AgentError("the agent refused to list its keys")
        if code != SSH2_AGENT_IDENTITIES_ANSWER:
            raise AgentError(f"unexpected agent reply {code} to a key list request")
        count = reader.uint32()
        # each entry takes at least 8 bytes: a lying count cannot make us loop long
        if count > (len(reader.data) - reader.pos) // 8:
            raise AgentError("malformed key list from the agent")
        keys = []
        for _ in range(count):
            blob = reader.string()
            comment = reader.string().decode("utf-8", "replace")
            keys.append(AgentKey(blob, comment))
        return keys

    async def sign_raw(self, blob: bytes, data: bytes, flags: int = 0,
                       timeout: float = SIGN_TIMEOUT) -> bytes:
        """The agent's SSH signature blob (``string format, string sig``) over *data*."""
        payload = (bytes([SSH2_AGENTC_SIGN_REQUEST]) + _string(blob) + _string(data)
                   + struct.pack(">I", flags))
        code, reader = await self._request(payload, timeout)
        if code in _FAILURE_CODES:
            raise AgentError("the agent refused to sign")
        if code != SSH2_AGENT_SIGN_RESPONSE:
            raise AgentError(f"unexpected agent reply {code} to a sign request")
        signature = reader.string()
        if not reader.at_end():
            raise AgentError("malformed sign response from the agent (trailing data)")
        return signature

    async def sign_jws(self, key: AgentKey, data: bytes,
                       timeout: float = SIGN_TIMEOUT) -> bytes:
        """Sign *data* (a JWT signing input) with *key*; the JWS-form signature
        for ``key.algorithm``."""
        if key.algorithm is None:
            raise AgentError(f"cannot use a {key.key_type or 'unknown'} key")
        flags = SSH_AGENT_RSA_SHA2_256 if key.key_type == "ssh-rsa" else 0
        return signature_to_jws(key, await self.sign_raw(key.blob, data, flags, timeout))

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)


@contextlib.asynccontextmanager
async def connect_agent(path: str, timeout: float = CONNECT_TIMEOUT
                        ) -> AsyncIterator[AgentConnection]:
    """``async with connect_agent(os.environ["SSH_AUTH_SOCK"]) as agent: ...``"""
    if not path:
        raise AgentError("no agent (SSH_AUTH_SOCK is not set)")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(path, limit=MAX_MESSAGE_SIZE + 4), timeout)
    except TimeoutError:
        raise AgentError(f"cannot connect to the agent at {path}: timed out") from None
    except OSError as exc:
        raise AgentError(f"cannot connect to the agent at {path}: "
                         f"{exc.strerror or exc}") from exc
    conn = AgentConnection(reader, writer)
    try:
        yield conn
    finally:
        await conn.close()


async def list_agent_keys(path: str) -> list[AgentKey]:
    """Connect, list the keys, disconnect."""
    async with connect_agent(path) as agent:
        return await agent.list_keys()


async def agent_sign_jws(path: str, key: AgentKey, data: bytes) -> bytes:
    """Connect, sign *data* with *key* in JWS form, disconnect."""
    async with connect_agent(path) as agent:
        return await agent.sign_jws(key, data)


__all__ = [
    "MAX_MESSAGE_SIZE",
    "SSH_AGENT_RSA_SHA2_256",
    "AgentConnection",
    "AgentError",
    "AgentKey",
    "agent_sign_jws",
    "connect_agent",
    "ecdsa_signature_to_jws",
    "key_type_of_blob",
    "list_agent_keys",
    "signature_to_jws",
]
