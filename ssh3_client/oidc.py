"""`ssh3 -use-oidc ISSUER`: log in with an OpenID Connect ID token (PROTOCOL.md §2.4.3).

The client configuration is the reference's: a JSON array of
``{"issuer_url", "client_id", "client_secret"}`` in ``-oidc-config FILE`` (default
``~/.ssh3/oidc_config.json``); the entry whose issuer_url equals ISSUER is used.

Two ways to get the ID token, both with authlib's OAuth 2 client over httpx2
(`authlib.integrations.httpx_client.AsyncOAuth2Client`: async, so it runs on the
client's event loop like everything else, and httpx2 is also what the server uses to
fetch JWKS, one HTTP library for both):

* **authorization code** (the reference's flow), with PKCE S256 unless ``-no-pkce``.
  A one-request HTTP listener on 127.0.0.1 (random port, served with h11) receives
  the redirect at ``http://127.0.0.1:PORT/ssh`` (RFC 8252 §7.3 loopback redirect; the
  reference writes ``localhost``). The ``state`` is random and checked (the reference
  sends the constant "state"). The URL is always printed on stderr and the browser is
  opened with `webbrowser` (which honours $BROWSER).
* **device authorization** (RFC 8628; beyond the reference) for terminals without a
  browser, or with ``-oidc-device``: the verification URI and user code are printed,
  and the token endpoint is polled at the given interval (+5 s on ``slow_down``).

The token is obtained before the QUIC connection is made (a human at a login page
would otherwise outlast the server's idle timeout), and sent as
``Authorization: Bearer <id_token>``. Scope: ``openid email``, as the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
import threading
import webbrowser
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("ssh3.oidc")

DEFAULT_CONFIG = "~/.ssh3/oidc_config.json"
SCOPE = "openid email"
LOGIN_TIMEOUT = 300.0  # a login nobody completes in 5 minutes fails
HTTP_TIMEOUT = 10.0
MAX_CONFIG = 1024 * 1024
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_DONE_PAGE = (b"<!doctype html><html><head><meta charset=utf-8><title>ssh3</title></head>"
              b"<body><p>ssh3: login received. You may close this window.</p></body></html>")


class OidcLoginError(Exception):
    pass


@dataclass(frozen=True)
class OidcClientConfig:
    issuer_url: str
    client_id: str
    client_secret: str


def _say(text: str) -> None:
    print(f"ssh3: {text}", file=sys.stderr, flush=True)


def load_config(path: str) -> list[OidcClientConfig]:
    """The reference's format: a JSON array of {issuer_url, client_id, client_secret}."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG + 1)
    except OSError as exc:
        raise OidcLoginError(f"cannot read the OIDC config {path}: {exc.strerror}") from exc
    try:
        entries = json.loads(data)
    except ValueError as exc:
        raise OidcLoginError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise OidcLoginError(f"{path}: expected a JSON array of "
                             "{issuer_url, client_id, client_secret} objects")
    configs = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("issuer_url"), str) \
                or not isinstance(entry.get("client_id"), str):
            raise OidcLoginError(f"{path}: entry {n} needs string issuer_url and client_id")
        secret = entry.get("client_secret", "")
        configs.append(OidcClientConfig(entry["issuer_url"], entry["client_id"],
                                        secret if isinstance(secret, str) else ""))
    return configs


def find_config(path: str, issuer: str) -> OidcClientConfig:
    for config in load_config(path):
        if config.issuer_url == issuer:
            return config
    raise OidcLoginError(f"no entry for issuer {issuer} in {path}")


def has_browser(env: Mapping[str, str]) -> bool:
    """Whether a browser can be opened here: $BROWSER names one, a desktop OS, or a
    graphical session (a console browser in this terminal would hide ssh3's prompts)."""
    return bool(env.get("BROWSER") or sys.platform in ("darwin", "win32")
                or env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def _oauth_client(config: OidcClientConfig, discovery: Mapping[str, Any], **kwargs: Any) -> Any:
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    supported = discovery.get("token_endpoint_auth_methods_supported") or [
        "client_secret_basic"]  # the default when the provider does not say
    if not config.client_secret:
        method = "none"  # a public client: client_id in the body only
    elif "client_secret_basic" in supported:
        method = "client_secret_basic"
    else:
        method = "client_secret_post"
    return AsyncOAuth2Client(config.client_id, config.client_secret or None,
                             token_endpoint_auth_method=method, scope=SCOPE,
                             timeout=HTTP_TIMEOUT, **kwargs)


async def discover(issuer: str) -> dict[str, Any]:
    import httpx2 as httpx

    if not issuer.startswith("https://"):
        raise OidcLoginError(f"issuer {issuer!r} is not an https:// URL")
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            resp = await client.get(url)
    except httpx.HTTPError as exc:
        raise OidcLoginError(f"OIDC discovery at {url} failed: {exc}") from exc
    if resp.status_code != 200:
        raise OidcLoginError(f"OIDC discovery at {url}: HTTP {resp.status_code}")
    try:
        doc = resp.json()
    except ValueError as exc:
        raise OidcLoginError(f"OIDC discovery at {url}: not JSON") from exc
    if not isinstance(doc, dict) or doc.get("issuer") != issuer:
        raise OidcLoginError(f"OIDC discovery at {url}: the document is not issuer {issuer}'s")
    return doc


def _id_token(token: Mapping[str, Any]) -> str:
    id_token = token.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise OidcLoginError("the provider returned no ID token")
    return id_token


# ---------------------------------------------------------------- code flow


def _open_browser(url: str) -> None:
    try:
        if not webbrowser.open(url):
            log.debug("no browser could be opened")
    except Exception as exc:  # noqa: BLE001 - the URL is printed anyway
        log.debug("opening a browser failed: %s", exc)


class _RedirectListener:
    """Receives the one redirect that carries the code (h11 over an asyncio server)."""

    def __init__(self, state: str) -> None:
        self._state = state
        self.result: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> _RedirectListener:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/ssh"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11

        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            request = None
            while request is None:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await asyncio.wait_for(reader.read(16 * 1024), 30.0)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.ConnectionClosed):
                    return
            status, body = self._handle(request.method, request.target.decode("latin-1"))
            headers = [("content-type", "text/html; charset=utf-8" if status == 200
                        else "text/plain; charset=utf-8"),
                       ("content-length", str(len(body))), ("connection", "close"),
                       ("cache-control", "no-store")]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
            writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        except (h11.RemoteProtocolError, TimeoutError, OSError) as exc:
            log.debug("redirect listener: %s", exc)
        finally:
            writer.close()

    def _handle(self, method: bytes, target: str) -> tuple[int, bytes]:
        url = urlsplit(target)
        if method != b"GET" or url.path != "/ssh":
            return 404, b"not found\n"
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        # a redirect with another state is not our login (CSRF): refuse it, keep waiting
        if not secrets.compare_digest(query.get("state", ""), self._state):
            return 400, b"bad state\n"
        if not self.result.done():
            self.result.set_result(query)
        if "error" in query:
            return 400, f"login failed: {query['error']}\n".encode()
        return 200, _DONE_PAGE


async def code_flow(config: OidcClientConfig, discovery: Mapping[str, Any], *, pkce: bool,
                    env: Mapping[str, str], timeout: float = LOGIN_TIMEOUT) -> str:
    """The authorization-code flow; returns the ID token."""
    from authlib.common.security import generate_token
    from authlib.integrations.base_client import OAuthError

    endpoint = discovery.get("authorization_endpoint")
    token_endpoint = discovery.get("token_endpoint")
    if not isinstance(endpoint, str) or not isinstance(token_endpoint, str):
        raise OidcLoginError("the provider has no authorization or token endpoint")
    state = secrets.token_urlsafe(24)
    verifier = generate_token(64) if pkce else None
    async with _RedirectListener(state) as listener:
        client = _oauth_client(config, discovery, redirect_uri=listener.redirect_uri,
                               code_challenge_method="S256" if pkce else None)
        async with client:
            url, _ = client.create_authorization_url(endpoint, state=state,
                                                     code_verifier=verifier)
            _say(f"log in at this URL (it opens in your browser if there is one):\n{url}")
            if has_browser(env):
                # webbrowser waits for a $BROWSER command to exit (a browser that was not
                # running yet exits when closed): a daemon thread, so neither the event
                # loop nor ssh3's exit waits for it
                threading.Thread(target=_open_browser, args=(url,), name="ssh3-browser",
                                 daemon=True).start()
            try:
                query = await asyncio.wait_for(asyncio.shield(listener.result), timeout)
            except TimeoutError:
                raise OidcLoginError(f"no login within {timeout:.0f} s") from None
            if "error" in query:
                raise OidcLoginError(f"the provider refused the login: {query['error']}"
                                     + (f" ({query['error_description']})"
                                        if query.get("error_description") else ""))
            code = query.get("code")
            if not code:
                raise OidcLoginError("the redirect carried no code")
            try:
                token = await client.fetch_token(token_endpoint, code=code,
                                                 code_verifier=verifier)
            except (OAuthError, OSError) as exc:
                raise OidcLoginError(f"token request failed: {exc}") from exc
            except Exception as exc:  # httpx errors
                raise OidcLoginError(f"token request failed: {exc}") from exc
    return _id_token(token)


# ---------------------------------------------------------------- device flow


async def device_flow(config: OidcClientConfig, discovery: Mapping[str, Any],
                      timeout: float = LOGIN_TIMEOUT) -> str:
    """RFC 8628: print the code, poll the token endpoint; returns the ID token."""
    from authlib.integrations.base_client import OAuthError

    endpoint = discovery.get("device_authorization_endpoint")
    token_endpoint = discovery.get("token_endpoint")
    if not isinstance(endpoint, str) or not isinstance(token_endpoint, str):
        raise OidcLoginError("the provider does not offer the device flow "
                             "(no device_authorization_endpoint)")
    loop = asyncio.get_running_loop()
    async with _oauth_client(config, discovery) as client:
        try:
            # the device endpoint authenticates the client as the token endpoint does
            resp = await client.request("POST", endpoint, data={"scope": SCOPE},
                                        auth=client.client_auth(client.token_endpoint_auth_method),
                                        withhold_token=True)
            answer = resp.json()
        except Exception as exc:  # httpx errors and bad JSON
            raise OidcLoginError(f"device authorization request failed: {exc}") from exc
        if resp.status_code != 200 or not isinstance(answer, dict) \
                or not isinstance(answer.get("device_code"), str):
            raise OidcLoginError(f"device authorization refused: HTTP {resp.status_code} "
                                 f"{answer.get('error', '') if isinstance(answer, dict) else ''}")
        uri = answer.get("verification_uri") or answer.get("verification_url")
        _say(f"to log in, visit {uri} and enter the code: {answer.get('user_code')}")
        if answer.get("verification_uri_complete"):
            _say(f"or open {answer['verification_uri_complete']}")
        interval = max(1, int(answer.get("interval") or 5))
        expires = float(answer.get("expires_in") or timeout)
        deadline = loop.time() + min(expires, timeout)
        while True:
            await asyncio.sleep(interval)
            if loop.time() > deadline:
                raise OidcLoginError("the device code expired before the login was approved")
            try:
                token = await client.fetch_token(token_endpoint, grant_type=DEVICE_GRANT,
                                                 device_code=answer["device_code"])
            except OAuthError as exc:
                if exc.error == "authorization_pending":
                    continue
                if exc.error == "slow_down":
                    interval += 5  # RFC 8628 §3.5
                    continue
                raise OidcLoginError(f"login refused: {exc.error}"
                                     + (f" ({exc.description})" if exc.description else "")
                                     ) from None
            except Exception as exc:  # httpx errors
                raise OidcLoginError(f"token request failed: {exc}") from exc
            return _id_token(token)


# ---------------------------------------------------------------- identity


async def get_id_token(issuer: str, config_path: str | None, *, pkce: bool = True,
                       device: bool | None = None,
                       env: Mapping[str, str] | None = None) -> str:
    """Run the login for `issuer`: the device flow when asked (`device=True`) or when
    there is no browser and the provider offers it; the code flow otherwise."""
    env = os.environ if env is None else env
    path = config_path or DEFAULT_CONFIG
    if path.startswith("~/") and env.get("HOME"):
        path = env["HOME"] + path[1:]
    path = os.path.expanduser(path)
    config = find_config(path, issuer)
    discovery = await discover(issuer)
    if device is None:
        device = not has_browser(env) and "device_authorization_endpoint" in discovery
    if device:
        return await device_flow(config, discovery)
    return await code_flow(config, discovery, pkce=pkce, env=env)


async def oidc_identity(args: Any, env: Mapping[str, str] | None = None) -> Any:
    """The `-use-oidc` identity, its token already obtained. If the login failed, the
    identity says so when tried (so the connection error names it as skipped)."""
    from ssh3.aio.client import Identity, IdentityUnavailable

    issuer: str = args.use_oidc
    try:
        id_token = await get_id_token(issuer, getattr(args, "oidc_config", None),
                                      pkce=not getattr(args, "no_pkce", False),
                                      device=True if getattr(args, "oidc_device", False)
                                      else None, env=env)
    except OidcLoginError as exc:
        _say(f"OIDC login with {issuer} failed: {exc}")
        failure = str(exc)

        def unavailable(user: str, conversation_id: bytes) -> str:
            raise IdentityUnavailable(failure)

        return Identity(f"oidc {issuer}", unavailable)

    def make(user: str, conversation_id: bytes) -> str:
        return "Bearer " + id_token

    return Identity(f"oidc {issuer}", make)


__all__ = [
    "DEFAULT_CONFIG",
    "OidcClientConfig",
    "OidcLoginError",
    "code_flow",
    "device_flow",
    "discover",
    "find_config",
    "get_id_token",
    "has_browser",
    "load_config",
    "oidc_identity",
]
