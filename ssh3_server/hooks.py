"""Hooks a program embedding the server overrides (`ssh3.listen(hooks=...)`).

`SSH3Server` calls them at three points: each authentication attempt, the start and
end of each session (one authenticated conversation), and each forwarding channel.
The defaults reproduce `ssh3-server`'s own behaviour, so the program and the
library share one code path. A hook that raises is logged and counts as a refusal
(authenticate, forward_requested) or is ignored (session_started/ended).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ssh3.aio.channel import Channel
from ssh3.auth.jwt_token import TokenError, verify_token
from ssh3.auth.keys import public_key_fingerprint

from .authenticate import Login
from .permissions import Permissions
from .process import UserInfo

if TYPE_CHECKING:
    from .server import SSH3Server

log = logging.getLogger("ssh3.server")
audit = logging.getLogger("ssh3.auth")


@dataclass(frozen=True)
class SessionInfo:
    """One authenticated conversation, as the hooks see it."""

    user: str
    peer: str  # "ip port" of the client
    local: str  # "ip port" of the server
    conversation: int  # its control stream ID, unique within the QUIC connection
    method: str  # "publickey", "password", or what a hook's accept() named
    fingerprint: str  # SHA256:... of the key that authenticated, "-" if none


class LoginAttempt:
    """One extended CONNECT's credentials. The hook decides with `await default()`
    (the server's pipeline: authorized_keys, passwords), `public_key(keys)` (the key
    of `keys` that signed the request's JWT, if any), `accept(...)`, or returns None
    to refuse."""

    def __init__(self, server: SSH3Server, username: str, conversation_id: bytes,
                 authorization: bytes, peer: str, host: str) -> None:
        self._server = server
        self.username = username
        self.conversation_id = conversation_id
        self.authorization = authorization
        self.peer = peer  # "ip:port"
        self.host = host  # the client's IP address
        text = authorization.decode("ascii", "replace")
        self.method = ("publickey" if text.startswith("Bearer ")
                       else "password" if text.startswith("Basic ") else "none")
        self.default_ran = False
        self.default_login: Login | None = None
        self.fingerprint = "-"

    async def default(self) -> Login | None:
        """What `ssh3-server` would decide (logged and penalised as usual)."""
        self.default_ran = True
        self.default_login = await self._server.authenticator.authenticate(
            self.username, self.conversation_id, self.authorization, self.peer, self.host)
        return self.default_login

    def public_key(self, keys: Iterable[Any]) -> Any | None:
        """The key of `keys` (cryptography public keys or OpenSSH `ssh-ed25519 AAAA…`
        lines) whose signature the request's JWT carries, for this user and this
        conversation; None if the request is not signed by one of them."""
        if self.method != "publickey":
            return None
        from cryptography.hazmat.primitives.serialization import load_ssh_public_key

        loaded = [load_ssh_public_key(k.encode()) if isinstance(k, str) else k for k in keys]
        token = self.authorization.decode("ascii", "replace")[len("Bearer "):]
        try:
            key = verify_token(token, loaded, self.username, self.conversation_id)
        except TokenError as exc:
            log.debug("authenticate hook: token of %r not accepted: %s", self.username, exc)
            return None
        self.fingerprint = public_key_fingerprint(key)
        return key

    def accept(self, user: str | None = None, permissions: Permissions | None = None,
               method: str | None = None) -> Login:
        """A login as `user` (default: the account the server runs as, for an
        embedded server without accounts of its own), with `permissions` (default:
        what the server's settings allow). Only a root server may name another
        account."""
        own = self._server._own_user
        info = UserInfo.lookup(user or own)
        if info.uid != os.geteuid() and not self._server._running_as_root:
            raise ValueError(f"the server runs as {own} and cannot start sessions as "
                             f"{info.name}")
        return Login(info, method or self.method, permissions or
                     self._server.base_permissions(), self.fingerprint)


class ServerHooks:
    """Override any of these in a subclass and pass an instance to `ssh3.listen`."""

    async def authenticate(self, attempt: LoginAttempt) -> Login | None:
        """Return a Login to let the client in, None to refuse (401)."""
        return await attempt.default()

    def session_started(self, info: SessionInfo) -> None:
        """An authenticated conversation began."""

    def session_ended(self, info: SessionInfo, reason: str) -> None:
        """It ended (client closed, connection lost, server shutting down)."""

    def forward_requested(self, kind: str, host: str, port: int) -> bool:
        """A direct-tcp ("tcp") or direct-udp ("udp") channel to host:port, after the
        server's own policy allowed it; False refuses it (administratively
        prohibited)."""
        return True


async def authenticate(hooks: ServerHooks, attempt: LoginAttempt) -> Login | None:
    """Ask the hook; a decision the default pipeline did not make (or that the hook
    reversed) gets its own audit line, and a refusal its penalty."""
    try:
        login = await hooks.authenticate(attempt)
    except Exception:  # noqa: BLE001 - a broken hook refuses, the server goes on
        log.exception("authenticate hook failed for %s from %s", attempt.username,
                      attempt.peer)
        login = None
    if not attempt.default_ran:
        if login is None:
            attempt._server.penalties.penalise(attempt.host, "authfail")
        audit.info("auth %s from %s user=%r method=%s key=%s by the authenticate hook",
                   "accepted" if login else "refused", attempt.peer, attempt.username,
                   login.method if login else attempt.method,
                   login.fingerprint if login else attempt.fingerprint)
    elif (login is None) != (attempt.default_login is None):
        audit.info("auth %s from %s user=%r: the authenticate hook reversed the decision",
                   "accepted" if login else "refused", attempt.peer, attempt.username)
    return login


def call(hook: Any, *args: Any) -> None:
    try:
        hook(*args)
    except Exception:  # noqa: BLE001 - a broken hook must not break the conversation
        log.exception("server hook %s failed", getattr(hook, "__name__", hook))


def forward_permitted(hooks: ServerHooks, channel: Channel, user: str, peer: str,
                      permissions: Permissions) -> bool:
    """Ask forward_requested (when the server's policy allows the kind at all: its
    own refusal comes first); on False the channel is refused here and let go."""
    from .forwarding import OPEN_ADMINISTRATIVELY_PROHIBITED, TCP_TYPES, _finish, _refuse

    kind = "tcp" if channel.channel_type in TCP_TYPES else "udp"
    if not (permissions.allow_tcp_forwarding if kind == "tcp"
            else permissions.allow_udp_forwarding):
        return True  # serve_forward_channel refuses it, with the usual message
    host, port = channel.header.address or ("", 0)
    try:
        allowed = bool(hooks.forward_requested(kind, host, port))
    except Exception:  # noqa: BLE001
        log.exception("forward_requested hook failed")
        allowed = False
    if allowed:
        return True
    log.warning("%s to %s port %d for %s from %s refused by the server's hook",
                channel.channel_type, host, port, user, peer)
    _refuse(channel, OPEN_ADMINISTRATIVELY_PROHIBITED,
            f"administratively prohibited: forwarding to {host} port {port} refused")
    _finish(channel)
    return False
