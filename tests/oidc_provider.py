"""A real OpenID provider for the tests, built on authlib's authorization server.

Flask + ``authlib.integrations.flask_oauth2``: the authorization-code grant with the
OpenID Connect extension and PKCE (RFC 7636), the device-authorization grant
(RFC 8628) with the same ID-token extension, a discovery document and a JWKS (RS256).
It is served over TLS on 127.0.0.1 (a port the kernel picks) by werkzeug in a thread,
with a certificate from a throw-away test CA (`TestCA`, made with `cryptography`).

One test user, auto-consented (no login page): the authorization endpoint answers a
GET with the redirect to the client at once, so a "browser" that only follows
redirects (curl, or the tests' script) completes the code flow. The device flow's
verification page approves a ``user_code`` posted to ``/device/approve``.

Knobs for refusal tests: `overrides` changes (or with None removes) claims of the
ID tokens issued next; `rotate_key()` publishes and signs with a new key;
`mint()` signs arbitrary claims with the provider's key.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc8628 import (
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
    DeviceCredentialDict,
)
from authlib.oidc.core import OpenIDCode
from authlib.oidc.core.grants.code import OpenIDToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import Flask, jsonify, request
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server

# ---------------------------------------------------------------- test CA


class TestCA:
    """A CA certificate and key; `issue()` makes a server certificate for 127.0.0.1."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ssh3 OIDC test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self._name = name
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .sign(self._key, hashes.SHA256()))
        self.cert_path = directory / "ca.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def context(self) -> ssl.SSLContext:
        """A client TLS context that trusts this CA only."""
        return ssl.create_default_context(cafile=str(self.cert_path))

    def issue(self, name: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
                .issuer_name(self._name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .sign(self._key, hashes.SHA256()))
        cert_path = self.directory / f"{name}.pem"
        key_path = self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path


# ---------------------------------------------------------------- models


@dataclass
class User:
    sub: str = "user-42"
    email: str = "alice@example.test"
    email_verified: bool = True

    def get_user_id(self) -> str:
        return self.sub


@dataclass
class OAuthClient(ClientMixin):
    client_id: str
    client_secret: str

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None

    def get_allowed_scope(self, scope: str) -> str:
        allowed = {"openid", "email", "profile"}
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # RFC 8252 §7.3: a loopback redirect with any port, path /ssh (ssh3's)
        url = urlsplit(redirect_uri)
        return url.scheme == "http" and url.hostname in ("127.0.0.1", "localhost") \
            and url.path == "/ssh"

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", DeviceCodeGrant.GRANT_TYPE)


@dataclass
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: User
    nonce: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


# ---------------------------------------------------------------- provider


class Provider:
    """Start with `start()`, stop with `stop()` (or use it as a context manager)."""

    def __init__(self, ca: TestCA, name: str = "op", client_id: str = "ssh3-test",
                 client_secret: str = "s3cret", device_interval: int = 1) -> None:
        self.ca = ca
        self.name = name
        self.user = User()
        self.clients = {client_id: OAuthClient(client_id, client_secret)}
        self.client_id, self.client_secret = client_id, client_secret
        self.device_interval = device_interval
        self.overrides: dict[str, Any] = {}
        self.slow_down_polls = 0  # answer this many device-flow polls with slow_down
        self.keys: list[RSAKey] = []
        self.rotate_key()
        self.codes: dict[str, AuthCode] = {}
        self.device_credentials: dict[str, DeviceCredentialDict] = {}
        self.user_grants: dict[str, bool] = {}
        self.authorize_requests: list[dict[str, str]] = []  # what /authorize was asked
        self.token_requests: list[dict[str, str]] = []  # grant_type + auth method seen
        self.poll_times: list[float] = []  # when the token endpoint was called
        self.jwks_fetches = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.app = self._make_app()

    # -- knobs

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.port}/{self.name}"

    def rotate_key(self, keep_old: bool = False) -> RSAKey:
        key = RSAKey.generate_key(2048, parameters={
            "kid": f"{self.name}-{secrets.token_hex(4)}", "use": "sig", "alg": "RS256"})
        self.keys = ([*self.keys] if keep_old else []) + [key]
        return key

    @property
    def signing_key(self) -> RSAKey:
        return self.keys[-1]

    def mint(self, **overrides: Any) -> str:
        """An ID token for the test user and client, with `overrides` (None removes)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": [self.client_id], "sub": self.user.sub,
            "iat": now, "exp": now + 600, "auth_time": now,
            "email": self.user.email, "email_verified": self.user.email_verified}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        key = self.signing_key
        return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)

    # -- lifecycle

    def start(self) -> Provider:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        cert, key = self.ca.issue(self.name)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True, ssl_context=ctx)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"oidc-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Provider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the authorization server

    def _make_app(self) -> Flask:
        provider = self
        app = Flask(f"oidc-{self.name}")
        app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": 600,
                                                 DeviceCodeGrant.GRANT_TYPE: 600}

        def save_token(token: dict[str, Any], req: Any) -> None:
            pass  # access tokens are not used by ssh3: nothing to remember

        server = AuthorizationServer(app, query_client=self.clients.get, save_token=save_token)

        class IdTokens(OpenIDToken):
            """ID tokens for both grants, signed with the provider's current key."""

            def encode_id_token(self, token: dict[str, Any], req: Any) -> str:
                extra: dict[str, Any] = {"aud": [req.client.get_client_id()]}
                code = getattr(req, "authorization_code", None)
                if code is not None and code.nonce:
                    extra["nonce"] = code.nonce
                extra.update(provider.overrides)
                return provider.mint(**extra)

        class OpenIDCodeIdTokens(IdTokens, OpenIDCode):
            def exists_nonce(self, nonce: str, req: Any) -> bool:
                return any(c.nonce == nonce for c in provider.codes.values())

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code: str, req: Any) -> None:
                data = req.payload.data
                provider.codes[code] = AuthCode(
                    code, req.client.get_client_id(), req.payload.redirect_uri,
                    req.payload.scope, req.user, data.get("nonce"),
                    data.get("code_challenge"), data.get("code_challenge_method"))

            def query_authorization_code(self, code: str, client: Any) -> AuthCode | None:
                item = provider.codes.get(code)
                return item if item and item.client_id == client.get_client_id() else None

            def delete_authorization_code(self, authorization_code: AuthCode) -> None:
                provider.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: AuthCode) -> User:
                return authorization_code.user

        class DeviceGrant(DeviceCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def query_device_credential(self, device_code: str) -> Any:
                return provider.device_credentials.get(device_code)

            def query_user_grant(self, user_code: str) -> tuple[User, bool] | None:
                if user_code not in provider.user_grants:
                    return None
                return provider.user, provider.user_grants[user_code]

            def should_slow_down(self, credential: Any) -> bool:
                if provider.slow_down_polls > 0:
                    provider.slow_down_polls -= 1
                    return True
                return False

        class DeviceEndpoint(DeviceAuthorizationEndpoint):
            CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
            INTERVAL = self.device_interval

            def get_verification_uri(self) -> str:
                return provider.issuer + "/device"

            def save_device_credential(self, client_id: str, scope: str,
                                       data: dict[str, Any]) -> None:
                provider.device_credentials[data["device_code"]] = DeviceCredentialDict(
                    client_id=client_id, scope=scope,
                    expires_at=time.time() + data["expires_in"], **data)

        server.register_grant(CodeGrant, [OpenIDCodeIdTokens(), CodeChallenge(required=False)])
        server.register_grant(DeviceGrant, [IdTokens()])
        server.register_endpoint(DeviceEndpoint)

        prefix = f"/{self.name}"

        @app.get(prefix + "/.well-known/openid-configuration")
        def discovery() -> Any:
            return jsonify({
                "issuer": provider.issuer,
                "authorization_endpoint": provider.issuer + "/authorize",
                "token_endpoint": provider.issuer + "/token",
                "device_authorization_endpoint": provider.issuer + "/device_authorization",
                "jwks_uri": provider.issuer + "/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "email", "profile"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                          "client_secret_post"],
                "code_challenge_methods_supported": ["S256"],
                "grant_types_supported": ["authorization_code", DeviceCodeGrant.GRANT_TYPE],
            })

        @app.get(prefix + "/jwks")
        def jwks() -> Any:
            provider.jwks_fetches += 1
            return jsonify({"keys": [k.as_dict(private=False) for k in provider.keys]})

        @app.get(prefix + "/authorize")
        def authorize() -> Any:
            provider.authorize_requests.append(dict(request.args))
            # auto-consent for the test user (a real provider shows a login page here)
            try:
                grant = server.get_consent_grant(end_user=provider.user)
            except OAuth2Error as error:
                return jsonify({"error": error.error}), 400
            return server.create_authorization_response(grant_user=provider.user, grant=grant)

        @app.post(prefix + "/token")
        def token() -> Any:
            provider.poll_times.append(time.monotonic())
            provider.token_requests.append({
                "grant_type": request.form.get("grant_type", ""),
                "auth": "client_secret_basic" if request.authorization
                else "client_secret_post" if request.form.get("client_secret") else "none",
                "code_verifier": "yes" if request.form.get("code_verifier") else "no"})
            return server.create_token_response()

        @app.post(prefix + "/device_authorization")
        def device_authorization() -> Any:
            return server.create_endpoint_response(DeviceEndpoint.ENDPOINT_NAME)

        @app.get(prefix + "/device")
        def device_page() -> Any:
            return "Post user_code to /device/approve to approve (test provider).\n"

        @app.post(prefix + "/device/approve")
        def device_approve() -> Any:
            user_code = request.form.get("user_code", "")
            known = {c["user_code"] for c in provider.device_credentials.values()}
            if user_code not in known:
                return jsonify({"error": "unknown user_code"}), 404
            provider.user_grants[user_code] = request.form.get("deny") is None
            return jsonify({"approved": provider.user_grants[user_code]})

        return app
