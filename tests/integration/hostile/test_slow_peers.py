"""Threat: peers that hold the proxy's resources by being slow: a client that trickles (or
stops sending) a request body, an upstream that sends a head and then nothing.

Rules: `timeouts.client_body` (default 60 s, nginx's client_body_timeout) bounds the time
between two reads of a request body: 408 and close. Bodies up to `limits.body_buffer` (64 KiB)
are read whole before an upstream connection is taken, so slow uploads hold no upstream
connection. `timeouts.upstream_read` (default 60 s, nginx's proxy_read_timeout) bounds the
time between two reads of a response after its head: 504 if nothing reached the client yet,
else the client's connection is cut; counted as a timeout of the version. A kept-alive
connection that sends nothing after an answer, the upstream's or the proxy's own (404, ...),
is closed after `timeouts.idle` (nginx's keepalive_timeout).
"""

from __future__ import annotations

import asyncio

from splitproxy.dataplane.http.downstream import DownstreamProtocol
from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy, version_errors
from tests.support.rawhttp import assert_error, build_request, raw_client
from tests.support.rawupstream import (
    recording_upstream,
    respond_with,
    run_raw_upstream,
)
from tests.support.waiting import wait_until

HEAD = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n"


async def test_stalled_body_gets_408_and_the_connection_closes() -> None:
    """nginx 1.22: 408 after client_body_timeout without a read."""
    async with recording_upstream() as rec:
        cfg = proxy_config([route({"stable": rec.url})], timeouts={"client_body": "0.5s"})
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as c:
                await c.send(HEAD + b"x" * 10)
                assert_error(await c.read_response(), 408)
                assert await c.is_closed()
    assert rec.requests == []


async def test_stalled_streamed_body_closes_its_upstream_connection() -> None:
    """With buffering off the upstream already has the head: it is closed on the timeout."""
    upstream_saw_eof = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # until the proxy closes
        upstream_saw_eof.set()

    async with run_raw_upstream(handler) as up:
        cfg = proxy_config([route({"stable": up.url})], timeouts={"client_body": "0.5s"},
                           limits={"body_buffer": 0})
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as c:
                await c.send(HEAD + b"x" * 10)
                assert_error(await c.read_response(), 408)
            await asyncio.wait_for(upstream_saw_eof.wait(), 5)
            assert version_errors(srv) == {}  # the client's fault, not the version's


async def test_a_body_that_keeps_coming_is_not_cut_by_the_body_timeout() -> None:
    async with recording_upstream() as rec:
        cfg = proxy_config([route({"stable": rec.url})], timeouts={"client_body": "1s"})
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as c:
                await c.send(HEAD)
                for _ in range(25):  # 2.5 s in all, longer than the timeout
                    await c.send(b"x" * 40)
                    await asyncio.sleep(0.1)
                resp = await c.read_response()
    assert resp.status == 200
    assert rec.requests[0].body == b"x" * 1000


async def test_1000_slow_uploads_hold_no_upstream_connection() -> None:
    """Before body buffering, 1000 slow uploads held 1000 upstream connections. nginx 1.22
    (measured with 50): none either; it buffers every body before proxying (to disk over
    16 KiB: a half-sent 10 MB upload holds none), where splitproxy streams bodies over
    `limits.body_buffer`."""
    async with recording_upstream() as rec:
        cfg = proxy_config([route({"stable": rec.url})], timeouts={"client_body": "30s"})
        async with run_proxy(cfg) as srv:
            writers: list[asyncio.StreamWriter] = []
            try:
                for _ in range(1000):
                    _, w = await asyncio.open_connection("127.0.0.1", srv.port)
                    w.write(HEAD + b"x" * 10)
                    writers.append(w)
                await asyncio.gather(*(w.drain() for w in writers))
                await wait_until(lambda: len(srv.connections) == 1000 and all(
                    isinstance(c, DownstreamProtocol) and c.receiving is not None and c.reads
                    for c in srv.connections), 20.0)
                assert rec.up is not None and rec.up.connections == 0
                # One finishes its body: it is proxied at once, on one connection.
                r, w = await asyncio.open_connection("127.0.0.1", srv.port)
                writers.append(w)
                w.write(build_request("POST", "/done", body=b"y" * 1000))
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                assert rec.up.connections == 1
            finally:
                for w in writers:
                    w.close()


async def test_upstream_that_stops_after_the_head_times_out_as_the_versions_fault() -> None:
    """nginx 1.22: proxy_read_timeout cuts the response; the client sees it end short."""
    handler = respond_with(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", hold=True)
    async with run_raw_upstream(handler) as up:
        cfg = proxy_config([route({"stable": up.url})], timeouts={"upstream_read": "0.5s"})
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as c:
                await c.send(build_request("GET", "/"))
                head = await c.read_head()
                assert head.status == 200
                data = await c.read_until_close(timeout=5)
                assert data == b"partial"  # cut short: never a body that looks complete
            assert version_errors(srv) == {"timeout": 1}


async def test_upstream_read_timeout_before_anything_reached_the_client_is_a_504() -> None:
    handler = respond_with(b"HTTP/1.1 100 Continue\r\n\r\n", hold=True)  # then silence
    async with run_raw_upstream(handler) as up:
        cfg = proxy_config([route({"stable": up.url})],
                           timeouts={"upstream_read": "0.5s", "response_header": "0.5s"})
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as c:
                assert_error(await c.request("GET", "/"), 504)
            assert version_errors(srv) == {"timeout": 1}


async def test_a_client_idle_after_the_proxys_own_answer_is_closed_after_idle_time() -> None:
    """nginx 1.22 (measured, `return 404` and keepalive_timeout 3s): the connection is closed
    3 s after the 404. splitproxy: the same after `timeouts.idle`, whoever answered."""
    cfg = proxy_config([route({"stable": "http://127.0.0.1:9"}, match={"path_prefix": "/api"})],
                       timeouts={"idle": "0.5s"})
    async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
        assert_error(await c.request("GET", "/elsewhere"), 404)
        assert await c.read_until_close() == b""  # the close comes, with nothing before it
        await wait_until(lambda: not srv.connections, what="the connection gone")
