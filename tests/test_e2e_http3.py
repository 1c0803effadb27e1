"""What a plain HTTP/3 client sees (aioquic, no ssh3 code): 404 that reveals nothing
for everything but an SSH3 CONNECT to the secret path, then 403, 401 and 425."""

from __future__ import annotations

import asyncio

import pytest
from e2e_helpers import (
    connect_headers,
    get_headers,
    raw_connect,
    raw_quic_configuration,
    run_async,
)

NOT_FOUND = b"404 page not found\n"


def _requests(server):
    return {
        "GET /": (get_headers(server, "/"), True),
        "GET secret path": (get_headers(server, server.url_path), True),
        "CONNECT without :protocol": (connect_headers(server, protocol=None), False),
        "CONNECT :protocol ssh3, other path": (connect_headers(server, path="/other"), False),
        "CONNECT :protocol other, secret path": (
            connect_headers(server, protocol=b"remote-terminal"), False),
    }


@pytest.mark.parametrize("case", ["GET /", "GET secret path", "CONNECT without :protocol",
                                  "CONNECT :protocol ssh3, other path",
                                  "CONNECT :protocol other, secret path"])
def test_everything_else_is_a_plain_404(server, case):
    headers, end_stream = _requests(server)[case]

    async def go():
        async with raw_connect(server) as proto:
            return await proto.request(headers, end_stream=end_stream)

    r = run_async(go())
    assert r.status == 404, (r.headers, r.body, r.reset)
    assert r.body == NOT_FOUND
    assert r.ended
    assert r.header(b"content-type") == b"text/plain; charset=utf-8"
    assert r.header(b"content-length") == b"19"
    # nothing hints that an SSH3 server is here
    assert r.header(b"server") is None
    assert b"ssh" not in b"".join(k + v for k, v in r.headers).lower()


def test_unsupported_version_gets_403_with_server_header(server):
    headers = connect_headers(
        server, user_agent=b"SSH 3.0 other/x 1.0.0 experimental_spec_version=alpha-01")

    async def go():
        async with raw_connect(server) as proto:
            return await proto.request(headers)

    r = run_async(go())
    assert r.status == 403, (r.headers, r.body, r.reset)
    server_header = r.header(b"server")
    assert server_header is not None and server_header.startswith(b"SSH 3.0 ")
    assert b"experimental_spec_version=alpha-00" in server_header
    assert b"alpha-01" in r.body or b"not supported" in r.body.lower(), r.body


def test_bad_credentials_get_401(server):
    async def go():
        async with raw_connect(server) as proto:
            return await proto.request(connect_headers(server, authorization=b"Bearer garbage"))

    r = run_async(go())
    assert r.status == 401, (r.headers, r.body, r.reset)
    assert r.header(b"server") is not None
    assert "auth refused" in server.log()


def test_several_requests_on_one_connection(server):
    """Refusals are per request: the connection stays usable."""
    async def go():
        async with raw_connect(server) as proto:
            statuses = []
            for headers, end in [(get_headers(server, "/"), True),
                                 (connect_headers(server), False),
                                 (connect_headers(server, path="/x"), False),
                                 (connect_headers(server), False)]:
                statuses.append((await proto.request(headers, end_stream=end)).status)
            return statuses

    assert run_async(go()) == [404, 401, 404, 401]


async def _get_ticket(server):
    tickets = []
    async with raw_connect(server, session_ticket_handler=tickets.append) as proto:
        r = await proto.request(get_headers(server, "/"), end_stream=True)
        assert r.status == 404
        await proto.wait_until(lambda: tickets, 5.0)
    assert tickets, "the server issued no session ticket"
    return tickets[-1]


def test_connect_in_0rtt_gets_425(server):
    async def go():
        ticket = await _get_ticket(server)
        assert ticket.max_early_data_size, "the ticket does not allow early data"
        cfg = raw_quic_configuration()
        cfg.session_ticket = ticket
        async with raw_connect(server, configuration=cfg, wait_connected=False) as proto:
            # sent right away: before the handshake completes, so as 0-RTT early data
            r = await proto.request(connect_headers(server))
            await proto.wait_until(lambda: proto._quic._handshake_complete, 5.0)
            return r, proto._quic.tls.session_resumed, proto._quic.tls.early_data_accepted

    r, resumed, early_accepted = run_async(go())
    assert resumed and early_accepted, "the server did not accept 0-RTT"
    assert r.status == 425, (r.headers, r.body, r.reset)
    assert r.header(b"server") is not None
    # refused before authentication
    assert "ssh3.auth: auth " not in server.log()


def test_stale_session_ticket_falls_back_to_a_full_handshake(server):
    """A ticket the server no longer knows (used before, or issued before a restart)
    must only cost the resumption, not the connection."""
    async def go():
        ticket = await _get_ticket(server)
        statuses = []
        for _ in range(2):  # the second use presents a ticket already consumed
            cfg = raw_quic_configuration()
            cfg.session_ticket = ticket
            try:
                async with asyncio.timeout(8):
                    async with raw_connect(server, configuration=cfg) as proto:
                        r = await proto.request(get_headers(server, "/"), end_stream=True)
                        statuses.append(r.status)
            except (TimeoutError, ConnectionError) as exc:
                statuses.append(repr(exc))
        return statuses

    statuses = run_async(go(), timeout=40)
    errors = [line for line in server.log().splitlines() if "Error" in line]
    assert statuses == [404, 404], errors[-3:]
    assert server.alive()
