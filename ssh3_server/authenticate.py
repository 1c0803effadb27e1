"""The authentication pipeline: one Authorization header in, a login (or None) out.

Each attempt is logged once on the `ssh3.auth` logger (time, source, user, method,
key fingerprint, result) and a failure penalises its source. A method is a small
`_check_*` step; what the matched identity allows is returned as `Permissions`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

from ssh3.auth.authorized_keys import OidcIdentity, PublicKeyIdentity, load_user_identities
from ssh3.auth.certificates import load_trusted_ca_file
from ssh3.auth.oidc import OidcError, ProviderCache, check_identities, is_id_token
from ssh3.auth.password import check_password, parse_basic

from .penalties import PenaltyBox
from .permissions import Permissions
from .process import UserInfo
from .pubkey_check import PublicKeyCheck, dummy_verification

log = logging.getLogger("ssh3.server")
audit = logging.getLogger("ssh3.auth")


@dataclass(frozen=True)
class Login:
    """A successful authentication."""

    user: UserInfo
    method: str  # "publickey", "password", "oidc"
    permissions: Permissions
    fingerprint: str = "-"


@dataclass
class AuthSettings:
    enable_password_login: bool = False
    # sshd-style AuthorizedKeysFile patterns; None: the reference's two files
    authorized_keys_files: list[str] | None = None
    # CA bundle trusted for OIDC discovery/JWKS fetches (None: the system's store)
    oidc_ca_file: str | None = None
    # sshd's PermitUserEnvironment: honour environment= options
    permit_user_environment: bool = False
    # sshd's TrustedUserCAKeys: a file of CA public keys
    trusted_user_ca_keys: str | None = None


@dataclass
class _Outcome:
    accepted: bool = False
    reason: str = ""
    fingerprint: str = "-"
    permissions: Permissions | None = None
    detail: str = ""  # e.g. the certificate's key id and CA


class Authenticator:
    def __init__(self, settings: AuthSettings, penalties: PenaltyBox,
                 base_permissions: Permissions, running_as_root: bool,
                 own_user: str) -> None:
        self.settings = settings
        self.penalties = penalties
        # what the server's flags allow; an identity's options only narrow it
        self.base_permissions = base_permissions
        self._running_as_root = running_as_root
        self._own_user = own_user
        self._oidc_cache: ProviderCache | None = None  # created at the first OIDC login

    async def authenticate(self, username: str, conv_id: bytes, authorization: bytes,
                           peer: str, host: str) -> Login | None:
        """One attempt, logged once (time, source, user, method, key, result)."""
        started = time.monotonic()
        text = authorization.decode("ascii", "replace")
        method = ("publickey" if text.startswith("Bearer ")
                  else "password" if text.startswith("Basic ") else "none")
        if method == "publickey" and is_id_token(text[len("Bearer "):]):
            # an ID token, not a key JWT (reference order: key JWTs, Basic, then OIDC)
            method = "oidc"
        outcome = _Outcome()
        try:
            user: UserInfo | None = None
            if not username:
                outcome.reason = "no user in the request"
            else:
                try:
                    user = UserInfo.lookup(username)
                except KeyError:
                    outcome.reason = "no such user"
            if user is not None and not self._running_as_root and user.name != self._own_user:
                outcome.reason = f"server runs as {self._own_user} and cannot log in others"
                user = None
            ok = False
            if method == "password":
                # checked even for unknown users: the answer takes the same time
                ok = await self._check_password(username, text, outcome)
            elif user is None:
                if method == "publickey":
                    # the same work as for a user: the time does not tell who exists
                    self._dummy_publickey(text, conv_id)
                return None
            elif method == "publickey":
                ok = self._check_publickey(user, text, conv_id, outcome, host)
            elif method == "oidc":
                ok = await self._check_oidc(user, text, outcome)
            else:
                outcome.reason = "no credentials"
            if not ok or user is None:
                return None
            return Login(user, method, outcome.permissions or self.base_permissions,
                         outcome.fingerprint)
        finally:
            if not outcome.accepted:
                self.penalties.penalise(
                    host, "invaliduser" if outcome.reason == "no such user" else "authfail")
            audit.info("auth %s from %s user=%r method=%s key=%s%s%s (%.1f ms)",
                       "accepted" if outcome.accepted else "refused", peer, username, method,
                       outcome.fingerprint, f" {outcome.detail}" if outcome.detail else "",
                       f" reason={outcome.reason}" if outcome.reason else "",
                       (time.monotonic() - started) * 1000)

    def _check_publickey(self, user: UserInfo, text: str, conv_id: bytes,
                         outcome: _Outcome, client_address: str) -> bool:
        token = text[len("Bearer "):]
        try:
            identities, warnings = load_user_identities(user.home, self._identity_paths(user))
        except OSError as exc:
            outcome.reason = f"cannot read identity files: {exc}"
            return False
        for warning in warnings:
            log.warning("%s", warning)
        lines = [i for i in identities if isinstance(i, PublicKeyIdentity)]
        check = PublicKeyCheck(token, user.name, conv_id, client_address,
                               self.base_permissions, self.settings.permit_user_environment)
        result = check.run(lines, self._trusted_cas())
        outcome.fingerprint = result.fingerprint
        if result.permissions is None:
            outcome.reason = result.reason
            return False
        if result.detail:
            outcome.detail = result.detail
        outcome.permissions = result.permissions
        outcome.accepted = not outcome.reason
        return outcome.accepted

    async def _check_oidc(self, user: UserInfo, text: str, outcome: _Outcome) -> bool:
        try:
            identities, _warnings = load_user_identities(user.home, self._identity_paths(user))
        except OSError as exc:
            outcome.reason = f"cannot read identity files: {exc}"
            return False
        oidc = [i for i in identities if isinstance(i, OidcIdentity)]
        if self._oidc_cache is None:
            self._oidc_cache = ProviderCache(self.settings.oidc_ca_file)
        try:
            match = await check_identities(text[len("Bearer "):], oidc, self._oidc_cache)
        except OidcError as exc:
            outcome.reason = outcome.reason or f"oidc: {exc}"
            return False
        outcome.fingerprint = f"{match.issuer}:{match.email}"  # the audit line's key= field
        outcome.accepted = not outcome.reason
        return outcome.accepted

    def _dummy_publickey(self, text: str, conv_id: bytes) -> None:
        dummy_verification(text[len("Bearer "):], conv_id, self.base_permissions,
                           self._trusted_cas())

    def _trusted_cas(self) -> set[bytes]:
        path = self.settings.trusted_user_ca_keys
        if not path:
            return set()
        try:
            keys, warnings = load_trusted_ca_file(path)
        except OSError as exc:
            # like sshd: an unreadable TrustedUserCAKeys trusts no CA (logged)
            log.warning("cannot read trusted CA keys %s: %s", path, exc)
            return set()
        for warning in warnings:
            log.warning("%s", warning)
        return keys

    async def _check_password(self, username: str, text: str, outcome: _Outcome) -> bool:
        if not self.settings.enable_password_login:
            outcome.reason = outcome.reason or "password login is disabled"
            return False
        creds = parse_basic(text)
        if creds is None:
            outcome.reason = outcome.reason or "malformed Basic credentials"
            return False
        basic_user, password = creds
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, check_password, basic_user, password)
        if basic_user != username:
            # the draft demands it, the reference does not check (Q16)
            outcome.reason = outcome.reason or "Basic user differs from the URL user"
            return False
        if not ok:
            outcome.reason = outcome.reason or "wrong password"
            return False
        outcome.accepted = not outcome.reason
        return outcome.accepted

    def _identity_paths(self, user: UserInfo) -> list[str] | None:
        if not self.settings.authorized_keys_files:
            return None
        paths = []
        for pattern in self.settings.authorized_keys_files:
            path = (pattern.replace("%%", "\0").replace("%h", user.home)
                    .replace("%u", user.name).replace("\0", "%"))
            paths.append(path if os.path.isabs(path) else os.path.join(user.home, path))
        return paths
