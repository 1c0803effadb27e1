"""The client side of OIDC (ssh3_client/oidc.py): the config file, the choice of flow,
the redirect listener (real sockets on 127.0.0.1), and the command-line flags."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ssh3_client.cli import parse_args
from ssh3_client.oidc import (
    OidcClientConfig,
    OidcLoginError,
    _RedirectListener,
    find_config,
    has_browser,
    load_config,
)


def test_config_is_the_references_json_array(tmp_path: Path) -> None:
    path = tmp_path / "oidc_config.json"
    path.write_text(json.dumps([
        {"issuer_url": "https://a.example", "client_id": "ca", "client_secret": "sa"},
        {"issuer_url": "https://b.example", "client_id": "cb"},  # a public client
    ]))
    assert load_config(str(path)) == [OidcClientConfig("https://a.example", "ca", "sa"),
                                      OidcClientConfig("https://b.example", "cb", "")]
    assert find_config(str(path), "https://b.example").client_id == "cb"
    with pytest.raises(OidcLoginError, match="no entry for issuer https://a.example/"):
        find_config(str(path), "https://a.example/")  # exact match, as the reference


@pytest.mark.parametrize("content, message", [
    ("{}", "JSON array"),
    ("[1]", "entry 0 needs"),
    ('[{"issuer_url": "https://x"}]', "entry 0 needs"),
    ("not json", "not JSON"),
])
def test_bad_config_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(OidcLoginError, match=message):
        load_config(str(path))
    with pytest.raises(OidcLoginError, match="cannot read"):
        load_config(str(tmp_path / "missing.json"))


def test_browser_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.platform", "linux")
    assert not has_browser({})
    assert has_browser({"BROWSER": "firefox"})
    assert has_browser({"DISPLAY": ":0"})
    assert has_browser({"WAYLAND_DISPLAY": "wayland-0"})


def test_flags() -> None:
    args = parse_args(["-use-oidc", "https://op.example", "-oidc-config", "/c.json",
                       "-no-pkce", "-oidc-device", "host", "cmd"])
    assert (args.use_oidc, args.oidc_config, args.no_pkce, args.oidc_device) == (
        "https://op.example", "/c.json", True, True)
    assert parse_args(["-do-pkce", "host"]).no_pkce is False


async def _get(port: int, target: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


def test_redirect_listener_checks_the_state() -> None:
    async def scenario() -> None:
        async with _RedirectListener("the-state") as listener:
            assert listener.redirect_uri == f"http://127.0.0.1:{listener.port}/ssh"
            assert (await _get(listener.port, "/favicon.ico")).startswith(b"HTTP/1.1 404")
            # a redirect with another state is refused and the login still waits
            answer = await _get(listener.port, "/ssh?code=evil&state=other")
            assert answer.startswith(b"HTTP/1.1 400")
            assert not listener.result.done()
            answer = await _get(listener.port, "/ssh?code=good&state=the-state")
            assert answer.startswith(b"HTTP/1.1 200") and b"You may close this window" in answer
            assert await listener.result == {"code": "good", "state": "the-state"}
            # garbage gets the connection closed, and the listener keeps serving
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(b"\x00\x01 not http\r\n\r\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert (await _get(listener.port, "/other")).startswith(b"HTTP/1.1 404")

    asyncio.run(scenario())


def test_device_flow_polls_at_the_interval_and_slows_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 8628 §3.5 against the in-suite provider: interval 1 s, then +5 s after a
    slow_down; the user approves after the first polls."""
    import httpx2
    from oidc_provider import Provider, TestCA

    from ssh3_client.oidc import device_flow, discover

    ca = TestCA(tmp_path / "ca")
    with Provider(ca, name="dev") as op:
        op.slow_down_polls = 1
        config = OidcClientConfig(op.issuer, op.client_id, op.client_secret)

        async def scenario() -> str:
            ctx = ca.context()
            async with httpx2.AsyncClient(verify=ctx) as http:
                discovery = (await http.get(
                    op.issuer + "/.well-known/openid-configuration")).json()
            flow = asyncio.ensure_future(device_flow(config, discovery))
            while len(op.poll_times) < 1:  # the first poll (answered slow_down)
                await asyncio.sleep(0.05)
            code = next(iter(op.device_credentials.values()))["user_code"]
            async with httpx2.AsyncClient(verify=ctx) as http:
                await http.post(op.issuer + "/device/approve", data={"user_code": code})
            return await asyncio.wait_for(flow, 30)

        monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_path))  # what the client trusts
        token = asyncio.run(scenario())
        assert asyncio.run(discover(op.issuer))["issuer"] == op.issuer
        assert token.count(".") == 2
        assert len(op.poll_times) == 2
        # after slow_down the client waited interval + 5 s before polling again
        assert op.poll_times[1] - op.poll_times[0] >= 6.0
