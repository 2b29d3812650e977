"""Proxy-made error responses: each code, its text body, its counter, and what happens after."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from splitproxy.config.models import Config
from tests.support.configs import proxy_config, route
from tests.support.proxy import proxied, run_proxy, version_errors
from tests.support.rawhttp import assert_error, build_request, get, parse_response_bytes, raw_client
from tests.support.rawupstream import respond_with, run_raw_upstream
from tests.support.upstream import run_upstream

PIN = {"pin_header": "X-Splitproxy-Version"}  # off unless configured


async def test_malformed_request_line_is_400_and_closes() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            await c.send(b"THIS IS NOT HTTP\r\n\r\n")
            resp = parse_response_bytes(await c.read_until_close())
        assert_error(resp, 400)
        assert srv.stats.bad_requests == 1
        assert up.requests == 0


async def test_header_block_over_limit_is_431_and_closes() -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], limits={"max_header": 8192})
        async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
            await c.send(build_request("GET", "/", {"X-Big": "x" * 9000}))
            resp = parse_response_bytes(await c.read_until_close())
        assert_error(resp, 431)
        assert srv.stats.bad_requests == 1
        assert up.requests == 0


async def test_header_block_just_under_limit_is_served() -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], limits={"max_header": 8192})
        async with run_proxy(cfg) as srv:
            resp = await get(srv.port, "/", headers={"X-Big": "x" * 7000})
        assert resp.status == 200


async def test_connect_refused_is_502_counted_as_connect(
    refused_port: Callable[[], int],
) -> None:
    cfg = proxy_config([route({"stable": f"http://127.0.0.1:{refused_port()}"})])
    async with run_proxy(cfg) as srv:
        resp = await get(srv.port, "/")
        assert_error(resp, 502)
        assert version_errors(srv) == {"connect": 1}
        assert srv.stats.get("shop", "stable").responses == {502: 1}


async def test_upstream_closing_before_response_is_502_counted_as_reset() -> None:
    async with run_raw_upstream(respond_with(b"")) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            resp = await get(srv.port, "/")
            assert_error(resp, 502)
            assert version_errors(srv) == {"reset": 1}
            assert srv.stats.get("shop", "stable").responses == {502: 1}


async def test_garbage_response_is_502_counted_as_protocol() -> None:
    garbage = b"SMTP READY\r\n\x00\x01\x02 nothing like http\r\n\r\n"
    async with run_raw_upstream(respond_with(garbage, hold=True)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            resp = await get(srv.port, "/")
            assert_error(resp, 502)
            assert version_errors(srv) == {"protocol": 1}
            assert srv.stats.get("shop", "stable").responses == {502: 1}


async def test_upstream_never_answering_is_504_after_response_header_timeout() -> None:
    async with run_raw_upstream(respond_with(b"", hold=True)) as up:
        cfg = proxy_config([route({"stable": up.url})], timeouts={"response_header": "500ms"})
        async with run_proxy(cfg) as srv:
            loop = asyncio.get_running_loop()
            start = loop.time()
            resp = await get(srv.port, "/")
            elapsed = loop.time() - start
            assert_error(resp, 504)
            assert 0.4 <= elapsed <= 1.5, elapsed
            assert version_errors(srv) == {"timeout": 1}
            assert srv.stats.get("shop", "stable").responses == {504: 1}


async def test_all_weights_zero_is_503() -> None:
    async with run_upstream("stable") as up:
        base = Config.model_validate(proxy_config([route({"stable": up.url}, sticky=PIN)]))
        # The config file rejects an all-zero route, but a rollout can take every version out
        # of traffic at run time; model_copy builds that state without validation.
        zero = base.routes[0].model_copy(update={"weights": {"stable": 0}})
        async with run_proxy(base.model_copy(update={"routes": (zero,)})) as srv:
            resp = await get(srv.port, "/")
            assert_error(resp, 503)
            # a pin still reaches the version: weight 0 is "no unpinned traffic", not "down"
            pinned = await get(srv.port, "/", headers={"X-Splitproxy-Version": "stable"})
            assert pinned.status == 200
        assert up.requests == 1


async def test_body_over_max_body_is_413() -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], limits={"max_body": 1000})
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as c:
                # only the head is sent: the proxy must answer from Content-Length alone
                await c.send(build_request("POST", "/echo", {"Content-Length": "1001"}))
                resp = await c.read_response()
            assert_error(resp, 413)
            ok = await get(srv.port, "/echo", method="POST", body=b"x" * 1000)
            assert ok.status == 200 and ok.body == b"x" * 1000
        assert up.requests == 1


async def test_chunked_body_over_max_body_is_not_forwarded_whole() -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], limits={"max_body": 1000})
        async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (2000, b"y" * 2000)
            await c.send(build_request("POST", "/sha256", {"Transfer-Encoding": "chunked"}, body))
            data = await c.read_until_close()
        # either refused up front (413) or cut off; never a 200 for the whole 2000 bytes
        if data:
            resp = parse_response_bytes(data)
            assert resp.status == 413 or b'"size": 2000' not in resp.body, data[:300]


async def test_http11_without_host_is_400() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            await c.send(b"GET / HTTP/1.1\r\nX-Nothing: here\r\n\r\n")
            resp = parse_response_bytes(await c.read_until_close())
        assert_error(resp, 400)
        assert up.requests == 0
        assert srv.stats.bad_requests == 1


async def test_connect_method_is_405() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            await c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            resp = await c.read_response()
        assert_error(resp, 405)
        assert up.requests == 0


async def test_no_matching_route_is_404() -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url}, match={"host": "shop.example.com"})])
        async with run_proxy(cfg) as srv:
            resp = await get(srv.port, "/", host="other.example.com")
        assert_error(resp, 404)
        assert up.requests == 0


async def test_errors_do_not_poison_the_next_request_on_the_connection(
    refused_port: Callable[[], int],
) -> None:
    refused = f"http://127.0.0.1:{refused_port()}"
    async with run_upstream("stable") as up:
        cfg = proxy_config(
            [route({"stable": up.url, "broken": refused}, {"stable": 1, "broken": 0}, sticky=PIN)]
        )
        async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
            bad = await c.request("GET", "/", {"X-Splitproxy-Version": "broken"})
            assert_error(bad, 502)
            if (bad.header("connection") or "").lower() == "close":
                assert await c.is_closed()
                good = await get(srv.port, "/")
            else:
                good = await c.request("GET", "/")
            assert (good.status, good.body) == (200, b"stable")
            assert version_errors(srv, "broken") == {"connect": 1}
            assert version_errors(srv, "stable") == {}
