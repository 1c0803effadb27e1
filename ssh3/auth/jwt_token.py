"""The public-key JWT of PROTOCOL.md §2.4.2: building it (client) and checking it (server).

The claim checks are written out here rather than delegated to pyjwt's
``jwt.decode`` because the reference server (golang-jwt v5 + the ssh3 plugin)
has its own exact rules: zero leeway, claim values truncated to whole seconds,
``exp`` mandatory with 0 meaning "absent", ``aud`` as string or list.  pyjwt is
used for the signature primitives only, and only after the algorithm has been
pinned to the type of the key it is checked against.
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import re
import time
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .keys import PrivateKey, PublicKey, jwt_algorithm

SUBJECT = "ssh3"
AUDIENCE = "unused"
CLIENT_ID_PREFIX = "ssh3-"
TOKEN_LIFETIME = 10  # seconds, as the Go client
MAX_TOKEN_LENGTH = 8 * 1024
# JWT header field carrying an OpenSSH certificate (ssh3/auth/certificates.py)
CERT_HEADER = "ssh3-cert"

# EdDSA means Ed25519 only here; pyjwt would also take Ed448 for that name.
ALLOWED_ALGORITHMS = frozenset({"RS256", "EdDSA", "ES256", "ES384"})

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


class TokenError(Exception):
    """The token was not accepted; ``reason`` is short and safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _go_json(obj: dict[str, Any]) -> bytes:
    """Serialise like Go's encoding/json for a map: sorted keys, compact, HTML-safe escapes.

    Matching Go byte for byte keeps our tokens identical to the reference
    client's for the same inputs, which the §2.4.2 example relies on.
    """
    text = json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for ch, esc in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, esc)
    return text.encode("utf-8", errors="replace")


def conversation_jti(conversation_id: bytes) -> str:
    """The ``jti`` value for a conversation: standard base64 *with* padding (§1.6)."""
    return base64.b64encode(conversation_id).decode("ascii")


def build_token(
    private_key: PrivateKey,
    user: str,
    conversation_id: bytes,
    now: int | None = None,
    *,
    backdate: int = 0,
    certificate: bytes | None = None,
) -> str:
    """Build the ``Bearer`` JWT the Go client sends for *user* (§2.4.2).

    *certificate* (an OpenSSH certificate blob for this key) goes into the header
    as ``ssh3-cert`` (docs/certificates.md); the reference server ignores it.

    *backdate* moves ``iat`` earlier while keeping ``exp`` at ``now + 10``: the
    reference server allows no leeway on ``iat``, so a client clock slightly
    ahead of the server's would otherwise be rejected.
    """
    if not isinstance(
        private_key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ):
        raise TypeError("build_token needs a private key")
    if backdate < 0:
        raise ValueError("backdate must not be negative")
    alg = jwt_algorithm(private_key)
    signing_input = token_signing_input(alg, user, conversation_id, now, backdate=backdate,
                                        certificate=certificate)
    signature = _sign(alg, private_key, signing_input.encode("ascii"))
    return finish_token(signing_input, signature)


def _sign(alg: str, key: PrivateKey, data: bytes) -> bytes:
    """JWS signature with `cryptography` directly: the client signs one token per
    login, and importing pyjwt just for that costs ~25 ms of start-up (the server's
    verification keeps pyjwt)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    digest = hashes.SHA384() if alg == "ES384" else hashes.SHA256()
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def token_signing_input(
    alg: str,
    user: str,
    conversation_id: bytes,
    now: int | None = None,
    *,
    backdate: int = 0,
    certificate: bytes | None = None,
) -> str:
    """``b64url(header).b64url(payload)`` of the §2.4.2 token, exactly as
    :func:`build_token` signs it.

    For signers that do not hold the private key here (an ssh-agent): sign
    these ASCII bytes with the algorithm *alg* names, then :func:`finish_token`.
    """
    if alg not in ALLOWED_ALGORITHMS:
        raise ValueError(f"unsupported JWT algorithm {alg!r}")
    if backdate < 0:
        raise ValueError("backdate must not be negative")
    if now is None:
        now = int(time.time())
    header = {"alg": alg, "typ": "JWT"}
    if certificate is not None:
        header[CERT_HEADER] = base64.b64encode(certificate).decode("ascii")
    payload = {
        "aud": AUDIENCE,
        "client_id": CLIENT_ID_PREFIX + user,
        "exp": now + TOKEN_LIFETIME,
        "iat": now - backdate,
        "iss": user,
        "jti": conversation_jti(conversation_id),
        "sub": SUBJECT,
    }
    return _b64url(_go_json(header)) + "." + _b64url(_go_json(payload))


def finish_token(signing_input: str, signature: bytes) -> str:
    """The compact JWS from a :func:`token_signing_input` and its JWS-form signature
    (EdDSA: 64 raw bytes; RS256: PKCS#1 v1.5; ES256/ES384: fixed-width r||s)."""
    return signing_input + "." + _b64url(signature)


def _decode_segment(segment: str) -> bytes:
    # golang-jwt decodes with RawURLEncoding, which refuses '='; Python's
    # decoder would silently accept padding and skip junk characters.
    if "=" in segment:
        raise TokenError("padded segment")
    if not _B64URL_RE.fullmatch(segment) or len(segment) % 4 == 1:
        raise TokenError("malformed token")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON; Go refuses them, so do we.
    raise ValueError(f"invalid JSON constant {name}")


def _decode_json_object(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TokenError("malformed token") from None
    if not isinstance(obj, dict):
        raise TokenError("malformed token")
    return obj


def _key_fits_alg(key: object, alg: str) -> bool:
    """Whether *key* may verify *alg*; the pairing golang-jwt enforces by key type."""
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey)
    if alg == "RS256":
        return isinstance(key, rsa.RSAPublicKey)
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    if alg == "ES384":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)
    return False


def _numeric_date(claims: dict[str, Any], name: str) -> int | None:
    """A NumericDate claim as golang-jwt v5 MapClaims reads it.

    Absent or exactly 0 means "not set"; any other number is truncated to whole
    seconds; non-numbers are invalid.
    """
    if name not in claims:
        return None
    value = claims[name]
    # bool is an int subclass in Python but a JSON boolean in Go.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"invalid {name}")
    if value == 0:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise TokenError(f"invalid {name}")
    return math.floor(value)


def _audience_ok(claims: dict[str, Any]) -> bool:
    aud = claims.get("aud")
    if isinstance(aud, str):
        values = [aud]
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        values = aud
    else:
        return False
    return AUDIENCE in values


def _check_claims(
    claims: dict[str, Any], user: str, conversation_id: bytes, now: float
) -> None:
    exp = _numeric_date(claims, "exp")
    if exp is None:
        raise TokenError("missing exp")
    # golang-jwt compares the full-precision clock against second-truncated
    # claims: valid iff iat <= now < exp (and nbf <= now).
    if not now < exp:
        raise TokenError("expired")
    nbf = _numeric_date(claims, "nbf")
    if nbf is not None and now < nbf:
        raise TokenError("not yet valid")
    iat = _numeric_date(claims, "iat")
    if iat is not None and now < iat:
        raise TokenError("issued in the future")
    if not _audience_ok(claims):
        raise TokenError("audience mismatch")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss or iss != user:
        raise TokenError("issuer mismatch")
    if claims.get("sub") != SUBJECT:
        raise TokenError("subject mismatch")
    client_id = claims.get("client_id")
    if not isinstance(client_id, str) or client_id != CLIENT_ID_PREFIX + user:
        raise TokenError("client_id mismatch")
    jti = claims.get("jti")
    expected = conversation_jti(conversation_id).encode("ascii")
    if not isinstance(jti, str) or not hmac.compare_digest(
        jti.encode("utf-8", errors="surrogatepass"), expected
    ):
        raise TokenError("conversation id mismatch")


def token_header(token: str) -> dict[str, Any]:
    """The decoded header of a compact JWS, with the same strictness as
    :func:`verify_token` (which still has to check everything)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed token")
    return _decode_json_object(_decode_segment(parts[0]))


def verify_token(
    token: str,
    public_keys: Iterable[object],
    user: str,
    conversation_id: bytes,
    now: float | None = None,
) -> PublicKey:
    """Check a §2.4.2 token for *user* on this conversation; return the key that verified it.

    Keys are tried in order and the first whose signature verifies wins.  Keys
    of a type that cannot produce the token's ``alg`` are skipped, never tried.
    Raises :class:`TokenError` on any failure.
    """
    if not isinstance(token, str):
        raise TokenError("malformed token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("token too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed token")
    header = _decode_json_object(_decode_segment(parts[0]))
    claims = _decode_json_object(_decode_segment(parts[1]))
    signature = _decode_segment(parts[2])

    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise TokenError("unsupported alg")
    # We implement no JWS extension, so RFC 7515 §4.1.11 says refuse any.
    if "crit" in header:
        raise TokenError("unsupported critical header")

    import jwt  # pyjwt: only the verifying side (the server) pays for its import

    algorithm = jwt.get_algorithm_by_name(alg)
    signing_input = (parts[0] + "." + parts[1]).encode("ascii")
    matched: PublicKey | None = None
    tried = False
    for key in public_keys:
        if not _key_fits_alg(key, alg):
            continue
        tried = True
        try:
            prepared = algorithm.prepare_key(key)
            ok = algorithm.verify(signing_input, prepared, signature)
        except (jwt.InvalidKeyError, TypeError, ValueError):
            continue
        if ok:
            matched = key  # type: ignore[assignment]
            break
    if matched is None:
        raise TokenError("signature invalid" if tried else "no key matches alg")

    _check_claims(claims, user, conversation_id, time.time() if now is None else float(now))
    return matched


__all__ = [
    "ALLOWED_ALGORITHMS",
    "CERT_HEADER",
    "MAX_TOKEN_LENGTH",
    "TokenError",
    "build_token",
    "conversation_jti",
    "finish_token",
    "token_header",
    "token_signing_input",
    "verify_token",
]
