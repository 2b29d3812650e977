"""Threat: request smuggling and header stripping through the `Connection` header.

Rule: a `Connection` token never removes Host, Content-Length, Transfer-Encoding or the
X-Forwarded-* headers; the forwarded request's framing is written from what the proxy's parser
read, in one place. Other nominated headers are removed (RFC 9110 7.6.1), in both directions.
"""

from __future__ import annotations

import json

from tests.support.configs import proxy_config, route
from tests.support.proxy import proxied, run_proxy
from tests.support.rawhttp import raw_client
from tests.support.rawupstream import recording_upstream, respond_with, run_raw_upstream


async def test_connection_naming_content_length_cannot_smuggle_a_second_request() -> None:
    """nginx 1.22: ignores the token; the upstream gets one POST with Content-Length: 37 and
    the body, and the client one answer. splitproxy: the same."""
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    async with recording_upstream() as rec:
        async with run_proxy(proxy_config([route({"stable": rec.url})])) as srv:
            async with raw_client(srv.port) as c:
                resp = await c.request("POST", "/upload", {"Connection": "Content-Length"},
                                       smuggled)
                assert resp.status == 200 and resp.body == b"ok /upload"
                resp = await c.request("GET", "/next")
                assert resp.body == b"ok /next"
    assert [r.target for r in rec.requests] == ["/upload", "/next"]
    first = rec.requests[0]
    assert first.header("content-length") == str(len(smuggled))
    assert first.body == smuggled


async def test_connection_naming_transfer_encoding_keeps_chunked_framing() -> None:
    """nginx 1.22: ignores the token (it re-frames the body with Content-Length)."""
    async with recording_upstream() as rec:
        async with run_proxy(proxy_config([route({"stable": rec.url})])) as srv:
            async with raw_client(srv.port) as c:
                await c.send(b"POST /c HTTP/1.1\r\nHost: h\r\nConnection: Transfer-Encoding\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                assert (await c.read_response()).body == b"ok /c"
    assert rec.requests[0].header("transfer-encoding") == "chunked"
    assert rec.requests[0].body == b"hello"


async def test_connection_cannot_remove_host_or_forwarding_headers() -> None:
    """nginx 1.22: `Connection: Host` is ignored, Host reaches the upstream."""
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            resp = await c.request("GET", "/headers", [
                ("Connection",
                 "Host, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Drop"),
                ("X-Forwarded-Proto", "https"), ("X-Drop", "1"), ("X-Keep", "1")])
    seen = {k.lower(): v for k, v in json.loads(resp.body)["headers"]}
    assert seen["host"] == "shop.example.com"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == "shop.example.com"
    assert "x-drop" not in seen and seen["x-keep"] == "1"


async def test_response_connection_cannot_unframe_the_body() -> None:
    """Same rule from the upstream: `Connection: Content-Length` in a response does not
    remove its framing (nginx re-frames what it read)."""
    reply = (b"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Secret\r\nX-Secret: s\r\n"
             b"Content-Length: 5\r\n\r\nhello")
    async with run_raw_upstream(respond_with(reply, hold=True)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with raw_client(srv.port) as c:
                resp = await c.request("GET", "/")
    assert resp.body == b"hello" and resp.header("content-length") == "5"
    assert resp.header("x-secret") is None
