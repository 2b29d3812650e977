"""Ambiguous framing is refused, never forwarded: requests get 400 and close, responses 502."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy, version_errors
from tests.support.rawhttp import assert_error, get, parse_response_bytes, raw_client
from tests.support.rawupstream import recording_upstream, respond_with, run_raw_upstream

HEAD = b"POST / HTTP/1.1\r\nHost: shop.example.com\r\n"

SHAPES: dict[str, bytes] = {
    "cl-and-te": HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "te-gzip-chunked": HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-chunked-twice": HEAD
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-chunked-chunked": HEAD + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "te-identity": HEAD + b"Transfer-Encoding: identity\r\n\r\nhello",
    "te-unknown": HEAD + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "cl-duplicate-same": HEAD + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl-duplicate-different": HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-plus-sign": HEAD + b"Content-Length: +5\r\n\r\nhello",
    "cl-list": HEAD + b"Content-Length: 5,5\r\n\r\nhello",
    "cl-not-a-number": HEAD + b"Content-Length: abc\r\n\r\nhello",
    "cl-negative": HEAD + b"Content-Length: -1\r\n\r\nhello",
    "bare-lf": b"GET / HTTP/1.1\nHost: shop.example.com\n\n",
    "bare-lf-in-headers": b"GET / HTTP/1.1\r\nHost: shop.example.com\nX-A: 1\r\n\r\n",
    "obs-fold-space": b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nX-A: 1\r\n 2\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nX-A: 1\r\n\t2\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nX-A : 1\r\n\r\n",
    "te-space-before-colon": HEAD + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    # RFC 9112 6.1: an HTTP/1.0 hop in front reads no chunked framing (nginx 1.22: 400 too)
    "te-in-http10": b"POST / HTTP/1.0\r\nHost: shop.example.com\r\nConnection: keep-alive\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("raw", SHAPES.values(), ids=SHAPES.keys())
async def test_ambiguous_request_framing_is_400_closed_and_never_forwarded(raw: bytes) -> None:
    async with recording_upstream() as rec:
        async with run_proxy(proxy_config([route({"stable": rec.url})])) as srv:
            async with raw_client(srv.port) as c:
                # a follow-up request rides along: smuggled or not, it must not reach upstream
                await c.send(raw + b"GET /smuggled HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
                data = await c.read_until_close()
            resp = parse_response_bytes(data)
            assert_error(resp, 400)
            # exactly one response, then the close
            assert data.count(b"HTTP/1.") == 1, data
            # A clean request after it is the first and only one the upstream sees.
            assert (await get(srv.port, "/after")).body == b"ok /after"
        assert [r.target for r in rec.requests] == ["/after"]
        assert rec.up is not None and rec.up.connections == 1


RESPONSE_FAULTS: dict[str, bytes] = {
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    "cl-different": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-not-a-number": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("raw", RESPONSE_FAULTS.values(), ids=RESPONSE_FAULTS.keys())
async def test_ambiguous_response_framing_is_502_protocol(raw: bytes) -> None:
    async with run_raw_upstream(respond_with(raw, hold=True)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with raw_client(srv.port) as c:
                await c.send(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
                try:
                    resp = await c.read_head()
                except asyncio.IncompleteReadError as exc:
                    raise AssertionError("connection closed without a 502") from exc
                if resp.status == 502:
                    resp.body = b"".join([part async for part in c.iter_body(resp)])
                    assert_error(resp, 502)
                else:
                    # Only a fault in the body (bad chunk size) may surface after the head
                    # went out; then the client must see a cut connection, never a clean end.
                    assert raw.startswith(b"HTTP/1.1 200 OK\r\nTransfer-Encoding"), resp
                    rest = await c.read_until_close()
                    assert b"0\r\n\r\n" not in rest and b"hello" not in rest, rest
            assert version_errors(srv) == {"protocol": 1}


async def test_ambiguous_request_framing_response_is_not_keepalive() -> None:
    async with run_raw_upstream(
        respond_with(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    ) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with raw_client(srv.port) as c:
                await c.send(SHAPES["cl-and-te"])
                resp = parse_response_bytes(await c.read_until_close())
            assert resp.status == 400
            assert (resp.header("connection") or "").lower() == "close"
