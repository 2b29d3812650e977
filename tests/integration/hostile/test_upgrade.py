"""Threat: bytes that ride along an Upgrade request, and switches nobody asked for.

Rules: until the upstream answers 101, what the client sends after an upgrade request's head
is held (and nothing more is read); on a 101 it is the new protocol's and goes to the
upstream, otherwise it is parsed as ordinary requests and answered in order, never forwarded
as it came. A 101 to a request that did not ask to upgrade, or a 101 without `Upgrade`, is a
502 and the upstream connection is closed, never pooled nor passed on as a switch; the
client's connection goes on.
"""

from __future__ import annotations

import asyncio

from tests.support.configs import proxy_config, route
from tests.support.proxy import proxied, run_proxy
from tests.support.rawhttp import assert_error, raw_client
from tests.support.rawupstream import (
    read_request,
    recording_upstream,
    respond_with,
    run_raw_upstream,
)

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"\r\n")
SECOND = b"GET /second HTTP/1.1\r\nHost: h\r\n\r\n"


async def test_request_riding_a_refused_upgrade_is_answered_as_a_request() -> None:
    """nginx 1.22: the upstream answers 200 (no switch); the second request is proxied as a
    request of its own and answered. splitproxy: the same."""
    async with recording_upstream() as rec:
        async with run_proxy(proxy_config([route({"stable": rec.url})])) as srv:
            async with raw_client(srv.port) as c:
                await c.send(UPGRADE + SECOND)
                first = await c.read_response()
                second = await c.read_response()
    assert (first.status, first.body) == (200, b"ok /ws")
    assert (second.status, second.body) == (200, b"ok /second")
    # Two clean requests upstream, each parsed whole: nothing was forwarded raw.
    assert [r.target for r in rec.requests] == ["/ws", "/second"]
    assert rec.up is not None and rec.up.connections == 2  # the refused one was not reused


async def test_bytes_after_upgrade_reach_the_upstream_only_after_its_101() -> None:
    """nginx 1.22 (measured): the same; the bytes reach the upstream after its 101."""
    got: list[bytes] = []
    switched = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.2)  # anything sent before the 101 would be waiting by now
        assert not reader._buffer  # type: ignore[attr-defined]  # nothing arrived early
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\n")
        await writer.drain()
        switched.set()
        got.append(await reader.readexactly(5))
        writer.write(b"world")
        await writer.drain()

    async with run_raw_upstream(handler) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with raw_client(srv.port) as c:
                await c.send(UPGRADE + b"hello")
                head = await c.read_head()
                assert head.status == 101
                assert await asyncio.wait_for(c.reader.readexactly(5), 5) == b"world"
    assert got == [b"hello"]


async def test_upgrade_with_a_body_is_refused() -> None:
    """nginx 1.22 (measured) forwards it, body and Upgrade header, and relays a 200 answer.
    splitproxy is stricter: llhttp cannot tell such a body from new-protocol bytes."""
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            await c.send(b"POST /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                         b"Upgrade: h2c\r\nContent-Length: 5\r\n\r\nhello")
            assert_error(await c.read_response(), 400)
    assert up.requests == 0


async def test_unrequested_101_is_a_502_and_never_pooled() -> None:
    """nginx passes such a 101 on but does not keep the connection; splitproxy answers 502:
    a client that did not ask to switch cannot speak what follows."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await read_request(reader) is None:
            return
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                     b"Upgrade: evil\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
        await writer.drain()
        await reader.read()

    async with run_raw_upstream(handler) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with raw_client(srv.port) as c:
                assert_error(await c.request("GET", "/a"), 502)
                assert_error(await c.request("GET", "/b"), 502)  # not the "evil" left-over
            assert up.connections == 2
            assert srv.stats.get("shop", "stable").errors["protocol"] == 2


async def test_101_without_upgrade_header_is_a_502_and_the_client_goes_on() -> None:
    """nginx 1.22 (measured) checks only the request's Upgrade: it passes such a 101 on and
    tunnels. splitproxy answers 502 (RFC 9110 15.2.2: a 101 says what it switches to) and,
    as after any refused upgrade, reads on: what the client sent behind the request is parsed
    as requests, and the connection is kept alive."""
    handler = respond_with(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
                           hold=True)
    async with run_raw_upstream(handler) as up:
        cfg = proxy_config([route({"stable": up.url}, match={"path_prefix": "/ws"})])
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as c:
                await c.send(UPGRADE + SECOND)  # /second: no route, the proxy's own 404
                assert_error(await c.read_response(), 502)
                assert_error(await c.read_response(), 404)
                assert_error(await c.request("GET", "/elsewhere"), 404)  # still kept alive
            assert srv.stats.get("shop", "stable").errors["protocol"] == 1


async def test_upgrade_to_a_local_answer_keeps_parsing_what_follows() -> None:
    """An upgrade request the proxy answers itself (no route: 404): the request after it is
    read and proxied."""
    async with recording_upstream() as rec:
        cfg = proxy_config([route({"stable": rec.url}, match={"path_prefix": "/api"})])
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as c:
                await c.send(UPGRADE + SECOND.replace(b"/second", b"/api/second"))
                first = await c.read_response()
                second = await c.read_response()
    assert (first.status, second.status, second.body) == (404, 200, b"ok /api/second")
    assert [r.target for r in rec.requests] == ["/api/second"]
