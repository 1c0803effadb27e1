"""The server's ID-token verifier (ssh3/auth/oidc.py) on hand-made tokens, and its
discovery/JWKS cache against the in-suite provider (TLS on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from oidc_provider import Provider, TestCA

from ssh3.auth.authorized_keys import OidcIdentity
from ssh3.auth.oidc import (
    NEGATIVE_KID_TTL,
    OidcError,
    ProviderCache,
    ProviderKeys,
    UnknownKeyId,
    allowed_algorithms,
    check_identities,
    is_id_token,
    verify_id_token,
)

ISSUER = "https://op.example.test"
CLIENT = "ssh3-client"
EMAIL = "alice@example.test"
NOW = 1_700_000_000


@pytest.fixture(scope="module")
def rsa() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})


def keys_of(*keys: Any, algs: tuple[str, ...] = ("RS256",), issuer: str = ISSUER) -> ProviderKeys:
    return ProviderKeys(issuer, {"keys": [k.as_dict(private=False) for k in keys]},
                        frozenset(algs))


def claims(**changes: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "aud": [CLIENT], "sub": "u1", "iat": NOW, "exp": NOW + 600,
            "email": EMAIL, "email_verified": True}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, alg: str = "RS256", kid: str | None = "k1", **changes: Any) -> str:
    header = {"alg": alg} | ({"kid": kid} if kid else {})
    return jwt.encode(header, claims(**changes), key, algorithms=[alg])


def verify(token: str, keys: ProviderKeys, now: float = NOW + 1, **kw: Any) -> Any:
    return verify_id_token(token, keys, kw.get("client_id", CLIENT),
                           kw.get("issuer_url", ISSUER), kw.get("email", EMAIL), now=now)


def b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_valid_token_is_accepted(rsa):
    tok = verify(sign(rsa), keys_of(rsa))
    assert (tok.issuer, tok.email, tok.subject, tok.audience) == (ISSUER, EMAIL, "u1", (CLIENT,))


def test_audience_string_or_list(rsa):
    verify(sign(rsa, aud=CLIENT), keys_of(rsa))
    verify(sign(rsa, aud=["other", CLIENT]), keys_of(rsa))
    for aud in (["other"], "other", None, 42):
        with pytest.raises(OidcError, match="audience"):
            verify(sign(rsa, aud=aud), keys_of(rsa))


def test_expiry_has_no_leeway(rsa):
    token = sign(rsa, exp=NOW + 10)
    verify(token, keys_of(rsa), now=NOW + 10)
    with pytest.raises(OidcError, match="expired"):
        verify(token, keys_of(rsa), now=NOW + 11)
    with pytest.raises(OidcError, match="no exp"):
        verify(sign(rsa, exp=None), keys_of(rsa))
    with pytest.raises(OidcError, match="not a number"):
        verify(sign(rsa, exp=str(NOW + 600)), keys_of(rsa))


def test_nbf_and_iat_have_five_minutes(rsa):
    verify(sign(rsa, nbf=NOW + 299), keys_of(rsa), now=NOW)
    with pytest.raises(OidcError, match="nbf"):
        verify(sign(rsa, nbf=NOW + 301), keys_of(rsa), now=NOW)
    verify(sign(rsa, iat=NOW + 299), keys_of(rsa), now=NOW)
    with pytest.raises(OidcError, match="iat"):
        verify(sign(rsa, iat=NOW + 301), keys_of(rsa), now=NOW)
    with pytest.raises(OidcError, match="no iat"):
        verify(sign(rsa, iat=None), keys_of(rsa))


def test_issuer_must_match_exactly(rsa):
    for iss in (ISSUER + "/", "https://OP.example.test", "https://evil.test", None):
        with pytest.raises(OidcError, match="issuer"):
            verify(sign(rsa, iss=iss), keys_of(rsa))
    # the identity line names another issuer than the one whose keys these are
    with pytest.raises(OidcError, match="issuer"):
        verify(sign(rsa), keys_of(rsa), issuer_url="https://other.test")


@pytest.mark.parametrize("value", [False, "true", "True", 1, None])
def test_email_verified_must_be_json_true(rsa, value):
    with pytest.raises(OidcError, match="email not verified"):
        verify(sign(rsa, email_verified=value), keys_of(rsa))


def test_email_must_match_exactly(rsa):
    for email in ("Alice@example.test", "alice@example.test ", "bob@example.test", None):
        with pytest.raises(OidcError, match="email"):
            verify(sign(rsa, email=email), keys_of(rsa))


def test_signature_and_algorithm(rsa):
    token = sign(rsa)
    head, payload, sig = token.split(".")
    forged = f"{head}.{b64(claims(email='mallory@example.test'))}.{sig}"
    with pytest.raises(OidcError, match="bad signature"):
        verify(forged, keys_of(rsa))
    # alg none and HMAC are never allowed, whatever the provider advertises
    unsigned = f"{b64({'alg': 'none', 'kid': 'k1'})}.{b64(claims())}."
    with pytest.raises(OidcError, match="not allowed"):
        verify(unsigned, keys_of(rsa, algs=("RS256", "none")))
    hs = sign(OctKey.generate_key(256), alg="HS256")
    with pytest.raises(OidcError, match="not allowed"):
        verify(hs, keys_of(rsa, algs=("RS256", "HS256")))
    # an algorithm the provider does not advertise
    any_alg = RSAKey.generate_key(2048, parameters={"kid": "k3"})  # no "alg" in the JWK
    with pytest.raises(OidcError, match="not allowed"):
        verify(sign(any_alg, alg="RS384", kid="k3"), keys_of(any_alg))
    verify(sign(any_alg, alg="PS256", kid="k3"), keys_of(any_alg, algs=("PS256",)))
    # a JWK whose "alg" is RS256 does not verify an RS384 signature
    with pytest.raises(OidcError, match="no key .* for RS384"):
        verify(sign(any_alg, alg="RS384", kid="k1"), keys_of(rsa, algs=("RS256", "RS384")))


def test_ec_key_and_keys_without_kid(rsa):
    ec = ECKey.generate_key("P-256", parameters={"kid": "e1"})
    verify(sign(ec, alg="ES256", kid="e1"), keys_of(rsa, ec, algs=("RS256", "ES256")))
    # no kid in the token: every key is tried, as go-oidc does
    verify(sign(ec, alg="ES256", kid=None), keys_of(rsa, ec, algs=("RS256", "ES256")))


def test_unknown_kid_is_reported_for_a_refetch(rsa):
    other = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    with pytest.raises(UnknownKeyId) as info:
        verify(sign(other, kid="k2"), keys_of(rsa))
    assert info.value.kid == "k2"


def test_garbage_tokens(rsa):
    for token in ("", "a.b", "a.b.c", "e30.e30.", "x" * 20000,
                  f"{b64([1])}.{b64(claims())}.AA"):
        with pytest.raises(OidcError):
            verify(token, keys_of(rsa))


def test_allowed_algorithms():
    assert allowed_algorithms({}) == {"RS256"}
    assert allowed_algorithms({"id_token_signing_alg_values_supported": ["HS256"]}) == {"RS256"}
    assert allowed_algorithms({"id_token_signing_alg_values_supported":
                               ["RS256", "ES384", "none", "EdDSA"]}) == {"RS256", "ES384",
                                                                         "EdDSA"}


def test_bearer_routing():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ssh3.auth.jwt_token import build_token

    ssh3_jwt = build_token(Ed25519PrivateKey.generate(), "alice", b"\0" * 32)
    assert not is_id_token(ssh3_jwt)
    assert is_id_token(f"{b64({'alg': 'RS256'})}.{b64(claims())}.AA")
    assert not is_id_token("not a token")


# ---------------------------------------------------------------- the cache


@pytest.fixture(scope="module")
def provider(tmp_path_factory) -> Any:
    ca = TestCA(tmp_path_factory.mktemp("oidc-ca"))
    with Provider(ca, name="unit") as op:
        yield op


def identity(op: Provider, **kw: Any) -> OidcIdentity:
    return OidcIdentity(kw.get("client_id", op.client_id), op.issuer,
                        kw.get("email", op.user.email), "test", 1)


def test_cache_fetches_once_and_refetches_on_rotation(provider):
    async def scenario() -> None:
        cache = ProviderCache(str(provider.ca.cert_path))
        before = provider.jwks_fetches
        for _ in range(3):
            await check_identities(provider.mint(), [identity(provider)], cache)
        assert provider.jwks_fetches - before == 1  # cached
        provider.rotate_key()
        match = await check_identities(provider.mint(), [identity(provider)], cache)
        assert match.email == provider.user.email
        assert provider.jwks_fetches - before == 2  # one refetch for the new kid
        # a kid the provider does not have: one refetch, then remembered as unknown
        stranger = RSAKey.generate_key(2048, parameters={"kid": "nobody"})
        token = jwt.encode({"alg": "RS256", "kid": "nobody"},
                           {"iss": provider.issuer}, stranger)
        for _ in range(3):
            with pytest.raises(OidcError, match="nobody"):
                await check_identities(token, [identity(provider)], cache)
        assert provider.jwks_fetches - before == 3

    asyncio.run(scenario())


def test_cache_rate_limits_forced_refetches(provider):
    async def scenario() -> None:
        clock = [1000.0]
        cache = ProviderCache(str(provider.ca.cert_path), clock=lambda: clock[0])
        await cache.keys(provider.issuer)
        before = provider.jwks_fetches
        for n in range(10):
            assert (await cache.refresh_for_kid(provider.issuer, f"random-{n}")) is None \
                or n < 3
        assert provider.jwks_fetches - before == 3  # FORCED_REFRESH_MAX a minute
        clock[0] += 61
        await cache.refresh_for_kid(provider.issuer, "random-later")
        assert provider.jwks_fetches - before == 4
        clock[0] += NEGATIVE_KID_TTL + 61
        await cache.refresh_for_kid(provider.issuer, "random-0")  # forgotten: refetched
        assert provider.jwks_fetches - before == 5

    asyncio.run(scenario())


def test_cache_refuses_wrong_issuer_and_untrusted_tls(provider, tmp_path):
    async def scenario() -> None:
        # the system trust store does not know the test CA
        with pytest.raises(OidcError, match="GET"):
            await ProviderCache(None).keys(provider.issuer)
        # an issuer URL that differs from the discovery document's "issuer"
        with pytest.raises(OidcError, match="discovery document names issuer"):
            await ProviderCache(str(provider.ca.cert_path)).keys(provider.issuer + "/")
        with pytest.raises(OidcError, match="https"):
            await ProviderCache(None).keys("http://127.0.0.1:1/x")

    asyncio.run(scenario())


def test_token_lifetime_from_provider_is_checked(provider):
    async def scenario() -> None:
        cache = ProviderCache(str(provider.ca.cert_path))
        now = int(time.time())
        with pytest.raises(OidcError, match="expired"):
            await check_identities(provider.mint(exp=now - 5, iat=now - 60),
                                   [identity(provider)], cache)
        with pytest.raises(OidcError, match="audience"):
            await check_identities(provider.mint(aud=["another-client"]),
                                   [identity(provider)], cache)
        # the second identity line matches: lines are tried in order
        match = await check_identities(
            provider.mint(), [identity(provider, email="x@y"), identity(provider)], cache)
        assert match.email == provider.user.email

    asyncio.run(scenario())
