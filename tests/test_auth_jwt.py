"""The public-key JWT of PROTOCOL.md §2.4.2 (ssh3.auth.jwt_token)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ssh3.auth.jwt_token import MAX_TOKEN_LENGTH, TokenError, build_token, verify_token
from ssh3.auth.keys import public_key_openssh

EXAMPLE_SEED = bytes(range(32))
EXAMPLE_CONV_ID_B64 = "7H5cy/nTXAJ/nsOpHmbW7k0YEHdQbQuUJuWg/C+hXuM="
EXAMPLE_CONV_ID = base64.b64decode(EXAMPLE_CONV_ID_B64)
EXAMPLE_IAT = 1700000000
EXAMPLE_HEADER = '{"alg":"EdDSA","typ":"JWT"}'
EXAMPLE_PAYLOAD = (
    '{"aud":"unused","client_id":"ssh3-alice","exp":1700000010,"iat":1700000000,'
    '"iss":"alice","jti":"7H5cy/nTXAJ/nsOpHmbW7k0YEHdQbQuUJuWg/C+hXuM=","sub":"ssh3"}'
)
EXAMPLE_TOKEN = (
    "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9."
    "eyJhdWQiOiJ1bnVzZWQiLCJjbGllbnRfaWQiOiJzc2gzLWFsaWNlIiwiZXhwIjoxNzAwMDAwMDEwLCJpYXQiOjE3"
    "MDAwMDAwMDAsImlzcyI6ImFsaWNlIiwianRpIjoiN0g1Y3kvblRYQUovbnNPcEhtYlc3azBZRUhkUWJRdVVKdVdn"
    "L0MraFh1TT0iLCJzdWIiOiJzc2gzIn0."
    "CWGXfRdAABf2HYjJyk_4qrHBkRvJcgpeXoeYyz_RDX0BcSbimrmf8TjdUmuqimoBkqlUAmeXucNBTgke6PG2Aw"
)
EXAMPLE_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"

CONV_ID = hashlib.sha256(b"some conversation").digest()
NOW = 1_750_000_000


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(seg: str) -> bytes:
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def example_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(EXAMPLE_SEED)


def claims(user: str = "alice", conv: bytes = CONV_ID, now: int = NOW, **over: Any) -> dict:
    c: dict[str, Any] = {
        "aud": "unused",
        "client_id": "ssh3-" + user,
        "exp": now + 10,
        "iat": now,
        "iss": user,
        "jti": base64.b64encode(conv).decode(),
        "sub": "ssh3",
    }
    for k, v in over.items():
        if v is _DROP:
            c.pop(k, None)
        else:
            c[k] = v
    return c


_DROP = object()


def sign(key: Any, payload: dict, alg: str, header: dict | None = None) -> str:
    """A JWS with arbitrary header/claims, signed with *alg* by *key*."""
    h = header if header is not None else {"alg": alg, "typ": "JWT"}
    signing_input = (
        b64url(json.dumps(h, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    sig = jwt.get_algorithm_by_name(alg).sign(signing_input.encode(), key)
    return signing_input + "." + b64url(sig)


def reason(token: str, keys: list, user: str = "alice", conv: bytes = CONV_ID,
           now: float = NOW + 1) -> str:
    with pytest.raises(TokenError) as info:
        verify_token(token, keys, user, conv, now=now)
    assert str(info.value) == info.value.reason
    return info.value.reason


KEY_FACTORIES = {
    "ed25519": (ed25519.Ed25519PrivateKey.generate, "EdDSA"),
    "p256": (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
    "p384": (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
    "rsa": (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {name: factory() for name, (factory, _) in KEY_FACTORIES.items()}


# --- the worked example ------------------------------------------------------------


def test_example_token_byte_for_byte() -> None:
    key = example_key()
    assert EXAMPLE_CONV_ID.hex().startswith("ec7e5ccb")
    assert EXAMPLE_CONV_ID.hex().endswith("2fa15ee3")
    assert public_key_openssh(key.public_key()) == EXAMPLE_PUB
    token = build_token(key, "alice", EXAMPLE_CONV_ID, now=EXAMPLE_IAT)
    assert token == EXAMPLE_TOKEN
    header, payload, _ = token.split(".")
    assert b64url_decode(header).decode() == EXAMPLE_HEADER
    assert b64url_decode(payload).decode() == EXAMPLE_PAYLOAD


def test_example_token_verifies_within_its_lifetime() -> None:
    pub = example_key().public_key()
    for now in (EXAMPLE_IAT, EXAMPLE_IAT + 0.5, EXAMPLE_IAT + 9.999):
        assert verify_token(EXAMPLE_TOKEN, [pub], "alice", EXAMPLE_CONV_ID, now=now) is pub
    assert reason(EXAMPLE_TOKEN, [pub], conv=EXAMPLE_CONV_ID, now=EXAMPLE_IAT + 10) == "expired"
    assert (
        reason(EXAMPLE_TOKEN, [pub], conv=EXAMPLE_CONV_ID, now=EXAMPLE_IAT - 0.001)
        == "issued in the future"
    )


def test_backdate_shifts_iat_only() -> None:
    token = build_token(example_key(), "alice", CONV_ID, now=NOW, backdate=2)
    payload = json.loads(b64url_decode(token.split(".")[1]))
    assert payload["iat"] == NOW - 2
    assert payload["exp"] == NOW + 10
    pub = example_key().public_key()
    assert verify_token(token, [pub], "alice", CONV_ID, now=NOW - 1.5) is pub
    with pytest.raises(ValueError):
        build_token(example_key(), "alice", CONV_ID, now=NOW, backdate=-1)


def test_build_token_default_clock_and_key_checks() -> None:
    token = build_token(example_key(), "alice", CONV_ID)
    assert verify_token(token, [example_key().public_key()], "alice", CONV_ID)
    with pytest.raises(TypeError):
        build_token(example_key().public_key(), "alice", CONV_ID)  # type: ignore[arg-type]


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KEY_FACTORIES))
def test_round_trip(keys: dict[str, Any], name: str) -> None:
    key = keys[name]
    token = build_token(key, "bob", CONV_ID, now=NOW)
    header = json.loads(b64url_decode(token.split(".")[0]))
    assert header == {"alg": KEY_FACTORIES[name][1], "typ": "JWT"}
    sig = b64url_decode(token.split(".")[2])
    if name == "p256":
        assert len(sig) == 64  # raw r||s, not DER
    if name == "p384":
        assert len(sig) == 96
    others = [k.public_key() for n, k in keys.items() if n != name]
    pub = key.public_key()
    assert verify_token(token, others + [pub], "bob", CONV_ID, now=NOW + 5) is pub


def test_first_verifying_key_wins(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    token = build_token(key, "alice", CONV_ID, now=NOW)
    pub_a = key.public_key()
    pub_b = ed25519.Ed25519PrivateKey.from_private_bytes(
        key.private_bytes_raw()
    ).public_key()  # same key, distinct object
    stranger = ed25519.Ed25519PrivateKey.generate().public_key()
    assert verify_token(token, [stranger, pub_b, pub_a], "alice", CONV_ID, now=NOW) is pub_b


def test_es256_der_signature_is_rejected(keys: dict[str, Any]) -> None:
    key = keys["p256"]
    token = build_token(key, "alice", CONV_ID, now=NOW)
    head = token.rsplit(".", 1)[0]
    der = key.sign(head.encode(), ec.ECDSA(hashes.SHA256()))
    assert reason(head + "." + b64url(der), [key.public_key()]) == "signature invalid"


# --- rejections ----------------------------------------------------------------------


def test_expired(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    token = build_token(key, "alice", CONV_ID, now=NOW)
    assert reason(token, [key.public_key()], now=NOW + 10) == "expired"
    assert reason(token, [key.public_key()], now=NOW + 3600) == "expired"
    assert verify_token(token, [key.public_key()], "alice", CONV_ID, now=NOW + 9.99)


def test_iat_in_future(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    token = build_token(key, "alice", CONV_ID, now=NOW)
    assert reason(token, [key.public_key()], now=NOW - 1) == "issued in the future"
    assert reason(token, [key.public_key()], now=NOW - 0.25) == "issued in the future"
    # iat == now is fine (zero leeway, but not strict).
    assert verify_token(token, [key.public_key()], "alice", CONV_ID, now=NOW)


def test_fractional_claims_truncate_to_seconds(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    pub = key.public_key()
    # iat 1.9 s ahead truncates to 1 s ahead of the second boundary: NOW+1.
    token = sign(key, claims(iat=NOW + 1.9, exp=NOW + 10.9), "EdDSA")
    assert reason(token, [pub], now=NOW + 0.99) == "issued in the future"
    assert verify_token(token, [pub], "alice", CONV_ID, now=NOW + 1)
    assert reason(token, [pub], now=NOW + 10) == "expired"


def test_nbf(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    token = sign(key, claims(nbf=NOW + 5), "EdDSA")
    assert reason(token, [key.public_key()], now=NOW + 1) == "not yet valid"
    assert verify_token(token, [key.public_key()], "alice", CONV_ID, now=NOW + 5)


def test_wrong_jti(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    token = build_token(key, "alice", CONV_ID, now=NOW)
    other = bytes(32)
    assert reason(token, [key.public_key()], conv=other) == "conversation id mismatch"
    # Unpadded or url-safe encodings of the right ID are not the same string.
    for jti in (
        base64.b64encode(CONV_ID).decode().rstrip("="),
        base64.urlsafe_b64encode(CONV_ID).decode(),
        CONV_ID.hex(),
        "",
        None,
        42,
        "é",
    ):
        if jti == base64.b64encode(CONV_ID).decode():
            continue
        token = sign(key, claims(jti=jti), "EdDSA")
        assert reason(token, [key.public_key()]) == "conversation id mismatch", jti
    token = sign(key, claims(jti=_DROP), "EdDSA")
    assert reason(token, [key.public_key()]) == "conversation id mismatch"


def test_jti_uses_constant_time_compare(keys: dict[str, Any], monkeypatch) -> None:
    calls = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("ssh3.auth.jwt_token.hmac.compare_digest", spy)
    key = keys["ed25519"]
    verify_token(build_token(key, "alice", CONV_ID, now=NOW), [key.public_key()], "alice",
                 CONV_ID, now=NOW)
    assert calls == [(base64.b64encode(CONV_ID), base64.b64encode(CONV_ID))]


def test_wrong_iss(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    pub = [key.public_key()]
    token = build_token(key, "mallory", CONV_ID, now=NOW)
    assert reason(token, pub, user="alice") == "issuer mismatch"
    for iss in ("bob", "", None, ["alice"], _DROP):
        assert reason(sign(key, claims(iss=iss), "EdDSA"), pub) == "issuer mismatch"


def test_wrong_sub(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    pub = [key.public_key()]
    for sub in ("ssh3-alice", "SSH3", "", None, _DROP):
        assert reason(sign(key, claims(sub=sub), "EdDSA"), pub) == "subject mismatch"


def test_aud(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    pub = [key.public_key()]
    for aud in ("used", "", [], ["other"], [""], ["unused", 1], 5, None, _DROP):
        assert reason(sign(key, claims(aud=aud), "EdDSA"), pub) == "audience mismatch", aud
    for aud in (["unused"], ["x", "unused"]):
        token = sign(key, claims(aud=aud), "EdDSA")
        assert verify_token(token, pub, "alice", CONV_ID, now=NOW + 1)


def test_wrong_client_id(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    pub = [key.public_key()]
    for cid in ("ssh3-bob", "alice", "ssh3-alice ", None, ["ssh3-alice"], _DROP):
        assert reason(sign(key, claims(client_id=cid), "EdDSA"), pub) == "client_id mismatch"


def test_missing_or_bad_exp(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    pub = [key.public_key()]
    assert reason(sign(key, claims(exp=_DROP), "EdDSA"), pub) == "missing exp"
    # golang-jwt treats 0 as absent; the reference then accepts the token forever.
    assert reason(sign(key, claims(exp=0), "EdDSA"), pub) == "missing exp"
    for bad in ("1750000010", True, None, [NOW + 10]):
        assert reason(sign(key, claims(exp=bad), "EdDSA"), pub) == "invalid exp", bad
    assert reason(sign(key, claims(iat="x"), "EdDSA"), pub) == "invalid iat"


def test_alg_none(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    pub = [key.public_key()]
    for alg in ("none", "None", "NONE", ""):
        head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        body = b64url(json.dumps(claims()).encode())
        assert reason(f"{head}.{body}.", pub) == "unsupported alg"
    head = b64url(json.dumps({"typ": "JWT"}).encode())
    assert reason(f"{head}.{b64url(json.dumps(claims()).encode())}.", pub) == "unsupported alg"


@pytest.mark.parametrize("name", list(KEY_FACTORIES))
def test_hmac_with_public_key_as_secret(keys: dict[str, Any], name: str) -> None:
    pub = keys[name].public_key()
    secrets = [
        public_key_openssh(pub).encode(),
        pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ]
    if name == "ed25519":
        secrets.append(pub.public_bytes_raw())
    for alg in ("HS256", "HS384", "HS512"):
        for secret in secrets:
            payload = json.dumps(claims(), separators=(",", ":")).encode()
            head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
            signing_input = f"{head}.{b64url(payload)}"
            mac = hmac.new(secret, signing_input.encode(), "sha" + alg[2:]).digest()
            assert reason(f"{signing_input}.{b64url(mac)}", [pub]) == "unsupported alg"


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "ES512", "ES256K", "EdDSA "])
def test_other_algorithms_unsupported(keys: dict[str, Any], alg: str) -> None:
    head = b64url(json.dumps({"alg": alg}).encode())
    token = f"{head}.{b64url(json.dumps(claims()).encode())}.AAAA"
    assert reason(token, [k.public_key() for k in keys.values()]) == "unsupported alg"


def test_alg_mismatching_key_type(keys: dict[str, Any]) -> None:
    ed = keys["ed25519"]
    p256 = keys["p256"]
    p384 = keys["p384"]
    rsa_key = keys["rsa"]
    # Ed25519 signature relabelled as ES256 / RS256: no authorized key of that type.
    good = build_token(ed, "alice", CONV_ID, now=NOW)
    _, body, sig = good.split(".")
    for alg in ("ES256", "ES384", "RS256"):
        head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        assert reason(f"{head}.{body}.{sig}", [ed.public_key()]) == "no key matches alg"
    # A P-384 key never verifies ES256 and vice versa, even if it is the only key.
    assert reason(sign(p384, claims(), "ES384"), [p256.public_key()]) == "no key matches alg"
    assert reason(sign(p256, claims(), "ES256"), [p384.public_key()]) == "no key matches alg"
    # RSA key with an EdDSA token and the reverse.
    assert reason(sign(ed, claims(), "EdDSA"), [rsa_key.public_key()]) == "no key matches alg"
    assert reason(sign(rsa_key, claims(), "RS256"), [ed.public_key()]) == "no key matches alg"
    # Ed448 is not EdDSA here; private key objects are not candidates.
    ed448_key = ed448.Ed448PrivateKey.generate()
    assert reason(sign(ed448_key, claims(), "EdDSA"), [ed448_key.public_key()]) == (
        "no key matches alg"
    )
    assert reason(sign(ed, claims(), "EdDSA"), [ed]) == "no key matches alg"


@pytest.mark.parametrize("name", list(KEY_FACTORIES))
def test_signed_by_another_key(keys: dict[str, Any], name: str) -> None:
    factory, alg = KEY_FACTORIES[name]
    stranger = factory()
    token = build_token(stranger, "alice", CONV_ID, now=NOW)
    assert reason(token, [keys[name].public_key()]) == "signature invalid"


def test_tampered_payload(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    head, _, sig = build_token(key, "alice", CONV_ID, now=NOW).split(".")
    body = b64url(json.dumps(claims(exp=NOW + 100000)).encode())
    assert reason(f"{head}.{body}.{sig}", [key.public_key()]) == "signature invalid"


def test_padded_segments(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    pub = [key.public_key()]
    token = build_token(key, "alice", CONV_ID, now=NOW)
    parts = token.split(".")
    for i in range(3):
        padded = list(parts)
        seg = padded[i]
        padded[i] = seg + "=" * ((-len(seg) % 4) or 4)
        assert reason(".".join(padded), pub) == "padded segment", i
    # Standard-alphabet or junk characters are not base64url.
    assert reason(f"{parts[0]}.{parts[1]}./{parts[2][1:]}", pub) == "malformed token"
    assert reason(f"{parts[0]}.{parts[1]}.+{parts[2][1:]}", pub) == "malformed token"
    assert reason(parts[0] + "!." + parts[1] + "." + parts[2], pub) == "malformed token"


def test_malformed_tokens(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    pub = [key.public_key()]
    token = build_token(key, "alice", CONV_ID, now=NOW)
    a, b, c = token.split(".")
    not_json = b64url(b"not json")
    array = b64url(b"[1,2]")
    nan = b64url(b'{"exp": NaN}')
    string_header = b64url(b'"EdDSA"')
    not_utf8 = b64url(b"\xff\xfe")
    for bad in (
        "",
        "abc",
        f"{a}.{b}",
        f"{a}.{b}.{c}.{c}",
        f"{a}.{b}.{c} ",
        f"{a}.{not_json}.{c}",
        f"{a}.{array}.{c}",
        f"{a}.{nan}.{c}",
        f"{string_header}.{b}.{c}",
        f"{a}.{not_utf8}.{c}",
    ):
        assert reason(bad, pub) == "malformed token", bad
    assert reason(None, pub) == "malformed token"  # type: ignore[arg-type]


def test_token_size_cap(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    big = sign(key, claims(pad="x" * MAX_TOKEN_LENGTH), "EdDSA")
    assert len(big) > MAX_TOKEN_LENGTH
    assert reason(big, [key.public_key()]) == "token too large"


def test_crit_header_rejected(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    token = sign(key, claims(), "EdDSA", header={"alg": "EdDSA", "crit": ["exp"], "exp": 1})
    assert reason(token, [key.public_key()]) == "unsupported critical header"


def test_no_keys() -> None:
    assert reason(EXAMPLE_TOKEN, [], conv=EXAMPLE_CONV_ID, now=EXAMPLE_IAT) == (
        "no key matches alg"
    )


def test_unicode_user_round_trip(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    token = build_token(key, "zoë<&>", CONV_ID, now=NOW)
    raw = b64url_decode(token.split(".")[1])
    # Go's encoding/json escapes <, >, & and writes other non-ASCII as UTF-8.
    assert b"\\u003c\\u0026\\u003e" in raw and "zoë".encode() in raw
    assert verify_token(token, [key.public_key()], "zoë<&>", CONV_ID, now=NOW)
