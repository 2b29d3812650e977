"""Threat: an upstream that sends interim (1xx) responses without end keeps a request open and
makes the proxy pass head after head to the client.

Rule: up to 100 interim responses before the final one are accepted (103 and other 1xx go to
HTTP/1.1 clients, a 100 is dropped: the proxy answers `Expect` itself); one more is a protocol
error of the version: 502, the upstream connection closed. CPython's http.client has the same
bound (100), Go's net/http allows 5, Envoy passes at most one on. nginx 1.22 (measured) has
no notion of interim responses from an upstream: it takes the first 1xx as the final answer,
sends its head and then nothing until proxy_read_timeout.
"""

from __future__ import annotations

import asyncio

import pytest

from splitproxy.dataplane.http.exchange import MAX_INTERIM
from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy, version_errors
from tests.support.rawhttp import assert_error, build_request, raw_client
from tests.support.rawupstream import RawHandler, answer, read_request, run_raw_upstream


def _interim_then_ok(count: int, closed: asyncio.Event) -> RawHandler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await read_request(reader) is not None:
                writer.write(b"".join(b"HTTP/1.1 103 Early Hints\r\nLink: </%d.css>\r\n\r\n" % i
                                      for i in range(count)))
                writer.write(answer(b"final"))
                await writer.drain()
        finally:
            closed.set()

    return handler


async def test_up_to_the_bound_interim_responses_pass_and_the_connection_is_reused() -> None:
    closed = asyncio.Event()
    async with run_raw_upstream(_interim_then_ok(MAX_INTERIM, closed)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with raw_client(srv.port) as c:
                for _ in range(2):
                    await c.send(build_request("GET", "/"))
                    for i in range(MAX_INTERIM):
                        head = await c.read_head()
                        assert head.status == 103 and head.header("link") == f"</{i}.css>"
                    resp = await c.read_response()
                    assert (resp.status, resp.body) == (200, b"final")
            assert version_errors(srv) == {}
    assert up.connections == 1


@pytest.mark.parametrize("status", [103, 100, 102])
async def test_one_interim_response_too_many_is_a_502_of_the_version(status: int) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            writer.write(b"HTTP/1.1 %d Interim\r\n\r\n" % status * (MAX_INTERIM + 1))
            writer.write(answer(b"never seen"))
            await writer.drain()
            await reader.read()
        finally:
            closed.set()

    async with run_raw_upstream(handler) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with raw_client(srv.port) as c:
                resp = await c.request("GET", "/")  # skips the interim heads passed on
                assert_error(resp, 502)  # the body says "upstream error"; the kind is counted
            await asyncio.wait_for(closed.wait(), 5)  # the upstream connection is closed
            assert version_errors(srv) == {"protocol": 1}
            assert srv.stats.get("shop", "stable").responses == {502: 1}
