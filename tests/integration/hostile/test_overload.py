"""Threat: more load than the proxy can carry, growing memory and latency without bound.

Rules (all answered 503 with `Retry-After: 1`, counted in the proxy's own counters as
`local["overload"]`, never against a version): more than `limits.max_connections` client
connections (default 10000); more than `limits.max_pending` requests waiting for an upstream
connection (default 1024); a request that waited `timeouts.pool_wait` (default 5 s) for one.
`loadtests/overload.py` shows the proxy shedding under sustained overload.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import pytest

from splitproxy.dataplane.http import pool
from tests.support.configs import proxy_config, route
from tests.support.proxy import proxied, run_proxy
from tests.support.rawhttp import build_request, raw_client


async def test_connections_over_the_cap_get_503_with_retry_after() -> None:
    """nginx 1.22 (measured, worker_connections 8, 12 clients): connections over its cap are
    reset without an answer ("worker_connections are not enough" in its log)."""
    async with proxied(limits={"max_connections": 2}) as (up, srv):
        async with raw_client(srv.port) as a, raw_client(srv.port) as b:
            assert (await a.request("GET", "/")).status == 200
            async with raw_client(srv.port) as c:
                resp = await c.request("GET", "/")
                assert resp.status == 503 and resp.header("retry-after") == "1"
                assert await c.is_closed()
            assert (await b.request("GET", "/")).status == 200
        assert srv.stats.local["overload"] == 1
        assert 503 not in srv.stats.get("shop", "stable").responses


@contextlib.contextmanager
def unaccepting_listener() -> Iterator[int]:
    """A port whose accept queue is full: a connection attempt hangs (SYNs are dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(2):  # Linux queues backlog + 1 connections
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for s in (*fillers, server):
            s.close()


async def test_requests_waiting_for_a_connection_are_capped_and_time_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "MAX_CONNECTING", 1)  # one attempt at a time, to fill
    with unaccepting_listener() as port:
        cfg = proxy_config([route({"stable": f"http://127.0.0.1:{port}"})],
                           timeouts={"connect": "3s", "pool_wait": "0.5s"},
                           limits={"max_pending": 1})
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as a, raw_client(srv.port) as b, \
                    raw_client(srv.port) as c:
                await a.send(build_request("GET", "/a"))  # connecting: hangs
                await asyncio.sleep(0.1)
                await b.send(build_request("GET", "/b"))  # waits for the attempt slot
                await asyncio.sleep(0.1)
                shed_now = await c.request("GET", "/c")  # over max_pending: at once
                assert shed_now.status == 503 and shed_now.header("retry-after") == "1"
                shed_later = await b.read_response()  # waited pool_wait
                assert shed_later.status == 503 and shed_later.header("retry-after") == "1"
                assert "0.5s" in shed_later.text
                assert (await a.read_response()).status == 504  # the endpoint's own failure
            assert srv.stats.local["overload"] == 2
            stats = srv.stats.get("shop", "stable")
            assert stats.responses == {504: 1}
            assert stats.in_flight == 0
