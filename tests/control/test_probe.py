"""One probe against real sockets on 127.0.0.1: what counts as a success, and the reason
given for each kind of failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from splitproxy.config.healthcheck import HealthCheck
from splitproxy.dataplane.http.probe import probe
from splitproxy.routing.table import Endpoint


@asynccontextmanager
async def answering(reply: bytes) -> AsyncIterator[tuple[Endpoint, list[bytes]]]:
    """A server that reads the request head, sends `reply` and closes."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield Endpoint("127.0.0.1", server.sockets[0].getsockname()[1]), heads
    finally:
        server.close()


async def test_a_2xx_passes_and_the_request_is_a_plain_get() -> None:
    async with answering(b"HTTP/1.1 204 No Content\r\n\r\n") as (ep, heads):
        assert await probe(ep, HealthCheck(path="/ready")) is None
    assert heads[0].startswith(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Connection: close\r\n" in heads[0]


async def test_a_status_outside_expect_status_fails() -> None:
    async with answering(b"HTTP/1.1 204 No Content\r\n\r\n") as (ep, _):
        assert await probe(ep, HealthCheck(expect_status=(200,))) == "status 204"
    async with answering(b"HTTP/1.1 500 Oops\r\n\r\n") as (ep, _):
        assert await probe(ep, HealthCheck()) == "status 500"


async def test_no_answer_or_not_http_fails() -> None:
    async with answering(b"") as (ep, _):
        assert await probe(ep, HealthCheck()) == "no HTTP status line"
    async with answering(b"SSH-2.0-OpenSSH\r\n") as (ep, _):
        assert (await probe(ep, HealthCheck()) or "").startswith("bad status line")


async def test_a_refused_connection_fails(refused_port: Callable[[], int]) -> None:
    error = await probe(Endpoint("127.0.0.1", refused_port()), HealthCheck())
    assert error is not None and error.startswith("ConnectionRefusedError"), error
