"""Threat: a peer that makes the proxy hold memory without bound.

Rules: nothing more is read from a client while answers wait to be written beyond the write
buffer's high-water mark, for every kind of answer (proxied or the proxy's own), and no new
answer starts while the client does not read; an upstream response head over
`limits.max_response_header` is a 502 (nginx: "upstream sent too big header", 502).

Measured before these rules (issue 9): a client that pipelines and never reads grew the proxy
by ~100 MB/s with 16 KB answers and by 167 MB in 5 s with local 404s; a 100 MB response head
took peak RSS to 475 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from tests.support.configs import proxy_config, route
from tests.support.memory import peak_rss
from tests.support.proxy import run_proxy
from tests.support.rawhttp import assert_error, build_request, raw_client
from tests.support.rawupstream import read_request, run_raw_upstream
from tests.support.upstream import run_upstream
from tests.support.waiting import wait_until

MB = 1 << 20


async def _pipeline_without_reading(port: int, request: bytes, seconds: float) -> float:
    """Sends `request` over and over on one connection and never reads; returns how long
    the client's last send had been blocked when time ran out (the proxy stopped reading)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    pending = b""
    blocked_since: float | None = None
    end = loop.time() + seconds
    try:
        while loop.time() < end:
            if len(pending) < 64 * 1024:
                pending += request * 256
            try:
                sent = sock.send(pending)
                pending = pending[sent:]
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or loop.time()
                await asyncio.sleep(0.01)
        return loop.time() - blocked_since if blocked_since is not None else 0.0
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["proxied 16 KiB answers", "local 404s"])
async def test_pipelining_client_that_never_reads_holds_bounded_memory(kind: str) -> None:
    """nginx 1.22 (measured, the same client and upstream, proxied 16 KiB answers): it stops
    reading too; the client's sends blocked within 0.1 s, the worker grew by 0.4 MB."""
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url}, match={"path_prefix": "/download"})])
        async with run_proxy(cfg) as srv:
            target = "/download?size=16384" if kind.startswith("proxied") else "/nothing-here"
            request = build_request("GET", target)
            async with peak_rss() as rss:
                blocked = await _pipeline_without_reading(srv.port, request, 3.0)
            # The positive signal: the proxy stopped reading this client long before the end.
            assert blocked > 1.0, f"the client could still send after {3.0 - blocked:.1f}s"
            grown = rss[1] - rss[0]
            assert grown < 40 * MB, f"RSS grew by {grown / MB:.0f} MB"
            served = up.requests
            # The proxy has let the client go and has nothing in flight: it produced little
            # after the client stopped.
            await wait_until(lambda: not srv.connections and up.in_flight == 0,
                             what="the client's connection to be closed")
            assert up.requests - served < 50


async def test_huge_response_head_is_a_502_with_bounded_memory() -> None:
    """nginx 1.22: 502, "upstream sent too big header while reading response header"."""
    sent = [0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
        chunk = b"a" * MB
        with contextlib.suppress(ConnectionError):
            for _ in range(100):  # 100 MB of one header value
                writer.write(chunk)
                await writer.drain()
                sent[0] += 1

    async with run_raw_upstream(handler) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with peak_rss() as rss:
                async with raw_client(srv.port) as c:
                    assert_error(await c.request("GET", "/"), 502)
            assert rss[1] - rss[0] < 40 * MB, f"RSS grew by {(rss[1] - rss[0]) / MB:.0f} MB"
            assert sent[0] < 100  # the proxy hung up instead of reading it all
            assert srv.stats.get("shop", "stable").errors["protocol"] == 1
