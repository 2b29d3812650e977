"""Passive health: consecutive connect failures eject an endpoint for a growing period, never
the last one; /status and splitproxy_endpoint_up show it."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from splitproxy.control.service import Service
from tests.support.configs import proxy_config, route
from tests.support.rawhttp import raw_client
from tests.support.rawupstream import read_request, run_raw_upstream
from tests.support.service import admin, metric, running_service, scrape, status
from tests.support.upstream import run_upstream
from tests.support.waiting import wait_until


def two_endpoints(live: str, dead: str, **health: Any) -> dict[str, Any]:
    """One version, a live and a dead endpoint; by default an ejection outlasts the test."""
    rules = {"consecutive_failures": 3, "base_ejection": "10s", "max_ejection": "20s",
             "min_healthy": 1, **health}
    return proxy_config([route({"stable": [live, dead]})], health=rules)


async def endpoint(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    versions = (await status(session))["routes"][0]["versions"]
    found: dict[str, Any] = next(e for e in versions["stable"]["endpoints"] if e["url"] == url)
    return found


async def get_all(svc: Service, n: int) -> dict[int, int]:
    """`n` GETs on one keep-alive connection; counts by status."""
    statuses: dict[int, int] = {}
    async with raw_client(svc.proxy_port) as c:
        for _ in range(n):
            resp = await c.request("GET", "/")
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
    return statuses


async def test_failing_endpoint_is_ejected_and_no_request_fails(
    tmp_path: Path, refused_port: Callable[[], int]
) -> None:
    dead = f"http://127.0.0.1:{refused_port()}"
    async with run_upstream("live") as live:
        cfg = two_endpoints(live.url, dead)
        async with running_service(tmp_path, cfg) as (svc, _), admin(svc) as session:
            # Round robin sends every other request to the dead endpoint; each connect failure
            # is retried on the live one, so the client sees no error at all.
            assert await get_all(svc, 20) == {200: 20}
            ep = await endpoint(session, dead)
            assert ep["up"] is False and ep["ejections"] == 1, ep
            assert (await endpoint(session, live.url))["up"] is True
            samples = await scrape(session)
    assert live.requests == 20
    key = dead.removeprefix("http://")
    assert metric(samples, "splitproxy_endpoint_up", version="stable", endpoint=key) == 0
    assert metric(samples, "splitproxy_endpoint_up", version="stable",
                  endpoint=live.url.removeprefix("http://")) == 1
    # Exactly the failures that ejected it: none once it was out of rotation.
    assert metric(samples, "splitproxy_upstream_errors_total", version="stable",
                  kind="connect") == 3
    assert metric(samples, "splitproxy_requests_total", version="stable", code="200") == 20
    assert metric(samples, "splitproxy_requests_total", version="stable", code="502") is None


async def test_ejected_endpoint_returns_and_repeat_ejection_lasts_twice_as_long(
    tmp_path: Path, refused_port: Callable[[], int]
) -> None:
    dead = f"http://127.0.0.1:{refused_port()}"
    async with run_upstream("live") as live:
        cfg = two_endpoints(live.url, dead, base_ejection="500ms", max_ejection="5s")
        async with running_service(tmp_path, cfg) as (svc, _), admin(svc) as session:
            loop = asyncio.get_running_loop()
            periods = []
            for round_ in (1, 2):
                assert await get_all(svc, 10) == {200: 10}
                ejected_at = loop.time()
                ep = await endpoint(session, dead)
                assert ep["up"] is False and ep["ejections"] == round_, ep

                async def back() -> bool:
                    return bool((await endpoint(session, dead))["up"])

                await wait_until(back, 3.0, f"endpoint back after ejection {round_}")
                periods.append(loop.time() - ejected_at)
                samples = await scrape(session)
                assert metric(samples, "splitproxy_endpoint_up",
                              endpoint=dead.removeprefix("http://")) == 1
    first, second = periods
    assert 0.3 <= first <= 0.9, periods  # 500 ms
    assert 0.8 <= second <= 1.5, periods  # doubled: 1 s
    assert second > first * 1.4, periods


async def test_only_endpoint_is_never_ejected(
    tmp_path: Path, refused_port: Callable[[], int]
) -> None:
    dead = f"http://127.0.0.1:{refused_port()}"
    cfg = proxy_config([route({"stable": dead})],
                       health={"consecutive_failures": 3, "min_healthy": 1})
    async with running_service(tmp_path, cfg) as (svc, _), admin(svc) as session:
        loop = asyncio.get_running_loop()
        for _ in range(10):
            start = loop.time()
            async with raw_client(svc.proxy_port) as c:
                resp = await c.request("GET", "/")
            assert resp.status == 502, resp.text  # never 503 "no healthy endpoint"
            assert loop.time() - start < 0.5
        ep = await endpoint(session, dead)
        assert ep["up"] is True and ep["ejections"] == 0, ep
        assert ep["consecutive_failures"] >= 3
        samples = await scrape(session)
    assert metric(samples, "splitproxy_endpoint_up", version="stable") == 1
    assert metric(samples, "splitproxy_requests_total", version="stable", code="502") == 10
    assert metric(samples, "splitproxy_upstream_errors_total", version="stable",
                  kind="connect") == 10


async def test_endpoint_that_resets_connections_is_ejected(tmp_path: Path) -> None:
    """Resets count like connect failures (issue 3: "N consecutive connect failures or
    connection resets"), even when the proxy retried the request elsewhere."""

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, no response byte

    async with run_raw_upstream(reset) as bad, run_upstream("live") as live:
        cfg = two_endpoints(live.url, bad.url)
        async with running_service(tmp_path, cfg) as (svc, _), admin(svc) as session:
            statuses = await get_all(svc, 20)
            ep = await endpoint(session, bad.url)
            samples = await scrape(session)
    resets = metric(samples, "splitproxy_upstream_errors_total", version="stable", kind="reset")
    assert ep["up"] is False and ep["ejections"] == 1, (
        f"{bad.connections} connections reset, {statuses}, reset errors counted: {resets}, "
        f"endpoint: {ep}"
    )
    assert bad.connections == 3
    assert resets is not None and resets >= 3
    assert metric(samples, "splitproxy_endpoint_up", endpoint=bad.url.removeprefix("http://")) == 0
