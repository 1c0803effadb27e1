"""OpenID Connect ID tokens on the server (PROTOCOL.md §2.4.3, §2.5).

An identity line ``oidc <client_id> <issuer_url> <email>`` admits a client that sends
``Authorization: Bearer <ID token>`` when the token passes the go-oidc v3 rules the
reference applies:

* the signature verifies with a key of the issuer's JWKS, under an algorithm the
  discovery document advertises (intersected with RS/ES/PS 256/384/512 and EdDSA;
  RS256 alone when that leaves nothing);
* ``iss`` equals ``<issuer_url>`` exactly (and the discovery document's ``issuer`` too);
* ``aud`` (a string or an array) contains ``<client_id>``;
* ``exp`` is present and not passed (no leeway); ``nbf``, if present, is at most
  5 minutes in the future; ``iat`` (required by OIDC Core) is at most 5 minutes in
  the future;
* ``email_verified`` is the JSON boolean ``true`` (a string ``"true"`` is refused, as
  go-oidc's decoder refuses it) and ``email`` equals ``<email>`` exactly.

`verify_id_token` does no I/O: it takes the issuer's keys as an argument.
`ProviderCache` fetches discovery documents and JWKS over HTTPS with an async HTTP
client (httpx2.AsyncClient, the successor of httpx that authlib now uses: the fetch
awaits on the server's event loop instead of blocking it, and no thread pool is
needed), caches them per issuer with a TTL, and
refetches the JWKS when a token names a ``kid`` it does not know (key rotation),
with a cap on such forced refreshes so that tokens with random ``kid``s cannot make
the server hammer the provider.

Signatures are checked with joserfc, the JOSE library authlib itself now builds on
(``authlib.jose`` is deprecated in its favour); the claim rules are written out
below because go-oidc's leeways differ per claim (0 for exp, 5 minutes for nbf).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ssh3.oidc")

# go-oidc's supportedAlgorithms
SUPPORTED_ALGS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
                            "PS256", "PS384", "PS512", "EdDSA"})
NBF_LEEWAY = 300  # go-oidc: 5 minutes for nbf
IAT_LEEWAY = 300
MAX_TOKEN = 16 * 1024  # an ID token is a few hundred bytes to a few KiB
MAX_DOCUMENT = 512 * 1024  # discovery document and JWKS
FETCH_TIMEOUT = 5.0
CACHE_TTL = 3600.0  # discovery + JWKS are refetched after an hour
FORCED_REFRESH_WINDOW = 60.0  # at most FORCED_REFRESH_MAX unknown-kid refetches a minute
FORCED_REFRESH_MAX = 3
NEGATIVE_KID_TTL = 300.0  # a kid still unknown after a refetch is not refetched for again


class OidcError(Exception):
    """The token is refused; the message says why (it goes to the audit line)."""


class UnknownKeyId(OidcError):
    """The token names a key the JWKS does not hold (maybe a rotation: refetch)."""

    def __init__(self, kid: str) -> None:
        super().__init__(f"no key with kid {kid!r} in the issuer's JWKS")
        self.kid = kid


@dataclass(frozen=True)
class ProviderKeys:
    """What the verification needs from one issuer: its exact name, keys, algorithms."""

    issuer: str
    jwks: Mapping[str, Any]  # the JWKS document ({"keys": [...]})
    algorithms: frozenset[str]


@dataclass(frozen=True)
class IdToken:
    issuer: str
    subject: str
    email: str
    audience: tuple[str, ...]
    claims: Mapping[str, Any] = field(repr=False)


def _b64json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise OidcError(f"malformed token {what}") from exc
    if not isinstance(value, dict):
        raise OidcError(f"token {what} is not a JSON object")
    return value


def peek_claims(token: str) -> dict[str, Any] | None:
    """The unverified payload of a compact JWS, or None if it is not one (used only
    to choose which verifier a Bearer token goes to, never to trust it)."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > MAX_TOKEN:
        return None
    try:
        return _b64json(parts[1], "payload")
    except OidcError:
        return None


def allowed_algorithms(discovery: Mapping[str, Any]) -> frozenset[str]:
    """go-oidc: the advertised ID-token algorithms it supports, else RS256 alone."""
    advertised = discovery.get("id_token_signing_alg_values_supported")
    if isinstance(advertised, list):
        algs = frozenset(a for a in advertised if isinstance(a, str)) & SUPPORTED_ALGS
        if algs:
            return algs
    return frozenset({"RS256"})


def _candidate_keys(jwks: Mapping[str, Any], kid: str | None, alg: str) -> list[Any]:
    from joserfc.jwk import import_key

    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise OidcError("the issuer's JWKS has no key list")
    keys = []
    kid_seen = False
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        if kid is not None and entry.get("kid") != kid:
            continue
        kid_seen = True
        if entry.get("use", "sig") != "sig" or entry.get("alg", alg) != alg:
            continue
        try:
            keys.append(import_key(entry))
        except Exception as exc:  # noqa: BLE001 - a malformed JWK is skipped
            log.debug("JWK %r skipped: %s", entry.get("kid"), exc)
    if not kid_seen and kid is not None:
        raise UnknownKeyId(kid)
    if not keys:
        raise OidcError(f"no key of the issuer's JWKS is for {alg} signatures")
    return keys


def _as_int(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    # JSON numbers only (go-oidc's jsonTime takes a number); bool is not a number
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OidcError(f"claim {name} is not a number")
    return int(value)


def verify_id_token(token: str, keys: ProviderKeys, client_id: str, issuer_url: str,
                    email: str, now: float | None = None) -> IdToken:
    """Check `token` against one identity (client_id, issuer_url, email). No I/O.

    Raises UnknownKeyId when the token's kid is not in `keys` (the caller may refetch
    the JWKS once and retry), OidcError for any other refusal."""
    from joserfc.errors import JoseError
    from joserfc.jws import JWSRegistry, deserialize_compact

    now = time.time() if now is None else now
    if len(token) > MAX_TOKEN:
        raise OidcError("token too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise OidcError("not a compact JWS")
    header = _b64json(parts[0], "header")
    alg = header.get("alg")
    # SUPPORTED_ALGS again: "none" and HMAC never pass, whatever `keys` says
    if not isinstance(alg, str) or alg not in keys.algorithms or alg not in SUPPORTED_ALGS:
        raise OidcError(f"algorithm {alg!r} not allowed (allowed: "
                        f"{', '.join(sorted(keys.algorithms))})")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise OidcError("kid is not a string")
    registry = JWSRegistry(algorithms=[alg])
    verified = None
    for key in _candidate_keys(keys.jwks, kid, alg):
        try:
            verified = deserialize_compact(token, key, algorithms=[alg], registry=registry)
            break
        except (JoseError, ValueError, TypeError):
            continue
    if verified is None:
        raise OidcError("bad signature")
    try:
        claims = json.loads(verified.payload)
    except ValueError as exc:
        raise OidcError("payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise OidcError("payload is not a JSON object")

    iss = claims.get("iss")
    if iss != keys.issuer or iss != issuer_url:
        raise OidcError(f"issuer {iss!r} is not {issuer_url!r}")
    aud = claims.get("aud")
    audience = (aud,) if isinstance(aud, str) else tuple(
        a for a in aud if isinstance(a, str)) if isinstance(aud, list) else ()
    if client_id not in audience:
        raise OidcError(f"audience {list(audience)} does not contain {client_id!r}")
    exp = _as_int(claims, "exp")
    if exp is None:
        raise OidcError("no exp claim")
    if now > exp:
        raise OidcError(f"token expired {int(now - exp)} s ago")
    nbf = _as_int(claims, "nbf")
    if nbf is not None and now + NBF_LEEWAY < nbf:
        raise OidcError("token not valid yet (nbf)")
    iat = _as_int(claims, "iat")
    if iat is None:
        raise OidcError("no iat claim")
    if now + IAT_LEEWAY < iat:
        raise OidcError("token issued in the future (iat)")
    # go-oidc decodes email_verified into a Go bool: only a JSON true passes
    if claims.get("email_verified") is not True:
        raise OidcError(f"email not verified (email_verified={claims.get('email_verified')!r})")
    if claims.get("email") != email:
        raise OidcError(f"email {claims.get('email')!r} is not {email!r}")
    sub = claims.get("sub")
    return IdToken(iss, sub if isinstance(sub, str) else "", email, audience, claims)


# ---------------------------------------------------------------- fetching


class FetchError(OidcError):
    pass


@dataclass
class _Entry:
    keys: ProviderKeys
    jwks_uri: str
    fetched: float
    forced: list[float] = field(default_factory=list)  # times of unknown-kid refetches
    unknown_kids: dict[str, float] = field(default_factory=dict)  # kid -> refused until


def _https_only(url: str, what: str) -> None:
    if not url.startswith("https://"):
        raise FetchError(f"{what} {url!r} is not an https:// URL")


class ProviderCache:
    """Discovery document + JWKS per issuer, fetched on demand and kept `ttl` seconds.

    Concurrent requests for the same issuer share one fetch. `ca_file` replaces the
    system's trust store. Proxy variables are ignored (trust_env=False)."""

    def __init__(self, ca_file: str | None = None, ttl: float = CACHE_TTL,
                 timeout: float = FETCH_TIMEOUT, clock: Any = time.monotonic) -> None:
        # the system's trust store (OpenSSL's default paths, which honour
        # $SSL_CERT_FILE/$SSL_CERT_DIR), or only `ca_file`
        self._verify = ssl.create_default_context(cafile=ca_file or None)
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0  # documents fetched (for tests and debug logs)

    async def _get_json(self, client: Any, url: str) -> dict[str, Any]:
        import httpx2 as httpx

        _https_only(url, "URL")
        try:
            async with client.stream("GET", url, headers={"Accept": "application/json"}) as resp:
                if resp.status_code != 200:
                    raise FetchError(f"GET {url}: HTTP {resp.status_code}")
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT:
                        raise FetchError(f"GET {url}: document larger than {MAX_DOCUMENT} bytes")
        except httpx.HTTPError as exc:
            raise FetchError(f"GET {url}: {exc or type(exc).__name__}") from exc
        self.fetches += 1
        try:
            value = json.loads(bytes(body))
        except ValueError as exc:
            raise FetchError(f"GET {url}: not JSON") from exc
        if not isinstance(value, dict):
            raise FetchError(f"GET {url}: not a JSON object")
        return value

    def _client(self) -> Any:
        import httpx2 as httpx

        return httpx.AsyncClient(verify=self._verify, timeout=self._timeout,
                                 follow_redirects=False, trust_env=False)

    async def _fetch(self, issuer: str, jwks_only: _Entry | None = None) -> _Entry:
        async with self._client() as client:
            if jwks_only is not None:
                jwks = await self._get_json(client, jwks_only.jwks_uri)
                keys = ProviderKeys(issuer, jwks, jwks_only.keys.algorithms)
                return _Entry(keys, jwks_only.jwks_uri, self._clock(), jwks_only.forced,
                              jwks_only.unknown_kids)
            _https_only(issuer, "issuer")
            doc = await self._get_json(
                client, issuer.rstrip("/") + "/.well-known/openid-configuration")
            if doc.get("issuer") != issuer:
                raise FetchError(f"discovery document names issuer {doc.get('issuer')!r}, "
                                 f"expected {issuer!r}")
            jwks_uri = doc.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise FetchError("discovery document has no jwks_uri")
            jwks = await self._get_json(client, jwks_uri)
        return _Entry(ProviderKeys(issuer, jwks, allowed_algorithms(doc)), jwks_uri,
                      self._clock())

    async def keys(self, issuer: str) -> ProviderKeys:
        """The issuer's keys, fetched if absent or older than the TTL."""
        lock = self._locks.setdefault(issuer, asyncio.Lock())
        async with lock:
            entry = self._entries.get(issuer)
            if entry is None or self._clock() - entry.fetched > self._ttl:
                entry = await self._fetch(issuer)
                self._entries[issuer] = entry
            return entry.keys

    async def refresh_for_kid(self, issuer: str, kid: str) -> ProviderKeys | None:
        """Refetch the JWKS because a token names `kid`; None when the rate limit (or
        a recent refetch that did not find this kid) says no."""
        lock = self._locks.setdefault(issuer, asyncio.Lock())
        async with lock:
            entry = self._entries.get(issuer)
            if entry is None:
                return None
            now = self._clock()
            if _has_kid(entry.keys.jwks, kid):  # another request refetched meanwhile
                return entry.keys
            if entry.unknown_kids.get(kid, 0.0) > now:
                return None
            entry.forced[:] = [t for t in entry.forced if now - t < FORCED_REFRESH_WINDOW]
            if len(entry.forced) >= FORCED_REFRESH_MAX:
                log.warning("OIDC %s: unknown kid %r, JWKS refetch rate limit reached",
                            issuer, kid)
                return None
            entry.forced.append(now)
            entry = await self._fetch(issuer, jwks_only=entry)
            self._entries[issuer] = entry
            if not _has_kid(entry.keys.jwks, kid):
                entry.unknown_kids[kid] = now + NEGATIVE_KID_TTL
            log.info("OIDC %s: JWKS refetched for kid %r", issuer, kid)
            return entry.keys


def _has_kid(jwks: Mapping[str, Any], kid: str) -> bool:
    entries = jwks.get("keys")
    return isinstance(entries, list) and any(
        isinstance(e, dict) and e.get("kid") == kid for e in entries)


@dataclass(frozen=True)
class OidcMatch:
    issuer: str
    email: str
    subject: str


async def check_identities(token: str, identities: Sequence[Any],
                           cache: ProviderCache) -> OidcMatch:
    """Try `token` against each OidcIdentity in order; the first that accepts wins.
    Raises OidcError with the reason of the last refusal."""
    claims = peek_claims(token)
    token_iss = claims.get("iss") if claims else None
    reason = "no oidc identity"
    for ident in identities:
        # a token from another issuer cannot match: do not fetch that issuer's keys
        if token_iss != ident.issuer_url:
            reason = f"issuer {token_iss!r} is not a trusted issuer"
            continue
        try:
            keys = await cache.keys(ident.issuer_url)
            try:
                tok = verify_id_token(token, keys, ident.client_id, ident.issuer_url,
                                      ident.email)
            except UnknownKeyId as exc:
                fresh = await cache.refresh_for_kid(ident.issuer_url, exc.kid)
                if fresh is None:
                    raise
                tok = verify_id_token(token, fresh, ident.client_id, ident.issuer_url,
                                      ident.email)
        except OidcError as exc:
            reason = str(exc)
            continue
        return OidcMatch(tok.issuer, tok.email, tok.subject)
    raise OidcError(reason)


def is_id_token(token: str) -> bool:
    """Whether a Bearer token is meant for the OIDC verifier: its (unverified) issuer
    is an https:// URL. SSH3 public-key JWTs carry the user name as `iss`, which
    never is one, so they stay with the public-key verifier."""
    claims = peek_claims(token)
    iss = claims.get("iss") if claims else None
    return isinstance(iss, str) and iss.startswith("https://")


__all__ = [
    "IdToken",
    "OidcError",
    "OidcMatch",
    "ProviderCache",
    "ProviderKeys",
    "UnknownKeyId",
    "allowed_algorithms",
    "check_identities",
    "is_id_token",
    "peek_claims",
    "verify_id_token",
]
