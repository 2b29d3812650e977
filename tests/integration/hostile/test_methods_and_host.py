"""Threat: requests nginx refuses outright that a proxy must not forward (TRACE echoes
credentials back, an empty Host has no authority to route or forward on), and requests that
name their host twice or in a shape no host has, so that the route and the upstream could read
different hosts.

Rules: TRACE is 405; a Host that is empty, repeated or holds a character no host or port has
(space, `/`, `@`, `\\`, a control byte) is 400. An absolute-form target (`GET http://h/x`, sent
to proxies) must name the Host header's host (port aside), else 400; without a Host header
(HTTP/1.0) its authority is the Host, routed on and forwarded. A trailing dot names the same
host (`shop.example.com.`). `*` is a target for OPTIONS only; a request line other than
HTTP/1.x is 505, a method llhttp does not know 400.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from splitproxy.dataplane.server import ProxyServer
from tests.support.configs import proxy_config, route
from tests.support.proxy import proxied, run_proxy
from tests.support.rawhttp import assert_error, raw_client
from tests.support.rawupstream import Recorder, recording_upstream


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


@asynccontextmanager
async def two_hosts() -> AsyncIterator[tuple[Recorder, Recorder, ProxyServer]]:
    """Route "shop" for shop.example.com, route "other" for other.example.com."""
    async with recording_upstream() as shop, recording_upstream() as other:
        cfg = proxy_config([
            route({"stable": shop.url}, match={"host": "shop.example.com"}),
            route({"stable": other.url}, name="other", match={"host": "other.example.com"}),
        ])
        async with run_proxy(cfg) as srv:
            yield shop, other, srv


@pytest.mark.parametrize("host", [
    b"shop.example.com/../admin",  # nginx 1.22: 400
    b"shop example.com",  # nginx 1.22: 400
    b"shop.example.com@other.example.com",  # nginx 1.22 passes it on (Go: 400)
    b"shop.example.com\\x",  # nginx 1.22 (on Linux) passes it on
])
async def test_a_host_that_is_no_host_is_refused_with_400(host: bytes) -> None:
    async with two_hosts() as (shop, other, srv):
        async with raw_client(srv.port) as c:
            await c.send(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            resp = await c.read_response()
            assert_error(resp, 400)
            assert "invalid Host header" in resp.text
            assert await c.is_closed()
    assert shop.requests == other.requests == []


async def test_an_absolute_target_naming_another_host_is_refused() -> None:
    """nginx 1.22 (measured, `proxy_set_header Host $http_host`): routes on the target's host
    (the other.example.com server) and forwards the Host header's (shop.example.com): the
    upstream of one host is asked for another. splitproxy refuses the request (as HAProxy)."""
    async with two_hosts() as (shop, other, srv):
        async with raw_client(srv.port) as c:
            await c.send(b"GET http://other.example.com/x HTTP/1.1\r\n"
                         b"Host: shop.example.com\r\n\r\n")
            resp = await c.read_response()
            assert_error(resp, 400)
            assert "another host than the Host header" in resp.text
    assert shop.requests == other.requests == []


@pytest.mark.parametrize(("request_bytes", "forwarded_target", "forwarded_host"), [
    # HTTP/1.0 without Host: the authority is the Host (nginx 1.22 routes on it as well).
    (b"GET http://other.example.com/x HTTP/1.0\r\n\r\n", "/x", "other.example.com"),
    # The query of a target without a path is kept (nginx 1.22 forwards "/?q=1" too).
    (b"GET http://other.example.com?q=1 HTTP/1.1\r\nHost: other.example.com\r\n\r\n",
     "/?q=1", "other.example.com"),
    # The same host, in capitals and fully qualified: one name (nginx 1.22: the same server).
    (b"GET http://OTHER.example.com./x HTTP/1.1\r\nHost: other.example.com:80\r\n\r\n",
     "/x", "other.example.com:80"),
    (b"GET /x HTTP/1.1\r\nHost: OTHER.EXAMPLE.COM.\r\n\r\n", "/x", "OTHER.EXAMPLE.COM."),
])
async def test_an_absolute_target_and_its_host_route_as_one_name(
        request_bytes: bytes, forwarded_target: str, forwarded_host: str) -> None:
    async with two_hosts() as (shop, other, srv):
        async with raw_client(srv.port) as c:
            await c.send(request_bytes)
            resp = await c.read_response()
    assert resp.status == 200
    assert shop.requests == []
    assert [(r.target, r.header("host")) for r in other.requests] == [
        (forwarded_target, forwarded_host)]


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET http://user@shop.example.com/ HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: shop.example.com\r\n\r\n", 505),
    (b"FOO / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", 400),
])
async def test_targets_methods_and_versions_that_are_refused(
        request_bytes: bytes, status: int) -> None:
    """nginx 1.22 (measured): 400 for a userinfo in the target and for `GET *`, 505 for
    HTTP/2.0 (llhttp would read it as HTTP/1.x); it forwards a method it does not know, which
    llhttp refuses (splitproxy: 400)."""
    async with two_hosts() as (shop, other, srv):
        async with raw_client(srv.port) as c:
            await c.send(request_bytes)
            assert_error(await c.read_response(), status)
            assert await c.is_closed()
    assert shop.requests == other.requests == []
