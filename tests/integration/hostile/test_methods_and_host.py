"""Threat: requests nginx refuses outright that a proxy must not forward (TRACE echoes
credentials back, an empty Host has no authority to route or forward on)."""

from __future__ import annotations

from tests.support.proxy import proxied
from tests.support.rawhttp import assert_error, raw_client


async def test_trace_is_refused_with_405_and_not_forwarded() -> None:
    """nginx 1.22: 405 Not Allowed, connection closed."""
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            resp = await c.request("TRACE", "/")
            assert_error(resp, 405)
            assert resp.header("connection") == "close"
            assert await c.is_closed()
    assert up.requests == 0


async def test_empty_host_is_refused_with_400() -> None:
    """nginx 1.22: 400 Bad Request, connection closed."""
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            await c.send(b"GET / HTTP/1.1\r\nHost: \r\n\r\n")
            assert_error(await c.read_response(), 400)
            assert await c.is_closed()
    assert up.requests == 0
