"""Active health checks against real upstreams: an endpoint failing its health path is taken
out before a client request fails on it, comes back after `healthy_threshold` successes, and a
probe that times out counts as a failure; /status and the metrics show both checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from splitproxy.cli.render import render
from splitproxy.control.service import Service
from splitproxy.control.status import Status
from splitproxy.dataplane.workers import WorkerPool
from tests.support.configs import proxy_config, route
from tests.support.ports import free_port
from tests.support.rawhttp import raw_client
from tests.support.service import (
    admin,
    generation,
    metric,
    running_service,
    scrape,
    status,
    write_config,
)
from tests.support.upstream import serve_app
from tests.support.waiting import WAIT, wait_until

# A generous timeout: a loaded machine must not fail the healthy endpoint's probes.
CHECK = {"path": "/healthz", "interval": "50ms", "timeout": "2s",
         "healthy_threshold": 3, "unhealthy_threshold": 2}


@dataclass
class HealthUpstream:
    """An upstream whose health path and client paths fail separately."""

    name: str
    port: int = 0
    health_status: int = 200
    health_hangs: bool = False
    client_status: int = 200
    probes: list[int] = field(default_factory=list)  # statuses answered to probes, in order
    # The proxy's view of this endpoint's active check as each probe arrives (set by the test).
    proxy_view: Callable[[], str] | None = None
    views: list[str] = field(default_factory=list)
    client_requests: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    def successes_since_last_failure(self) -> int:
        n = 0
        for s in reversed(self.probes):
            if s != 200:
                break
            n += 1
        return n


@asynccontextmanager
async def run_health_upstream(name: str) -> AsyncIterator[HealthUpstream]:
    up = HealthUpstream(name)

    async def healthz(request: web.Request) -> web.Response:
        if up.health_hangs:
            await asyncio.sleep(3600)  # cancelled when the probe closes its connection
        up.probes.append(up.health_status)
        if up.proxy_view is not None:
            up.views.append(up.proxy_view())
        return web.Response(status=up.health_status, text="health")

    async def client(request: web.Request) -> web.Response:
        up.client_requests += 1
        return web.Response(status=up.client_status, text=up.name)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/{tail:.*}", client)
    async with serve_app(app) as port:
        up.port = port
        yield up


def config(a: HealthUpstream, b: HealthUpstream, **check: Any) -> dict[str, Any]:
    r = route({"stable": [a.url, b.url]})
    r["health_check"] = {**CHECK, **check}
    # Passive ejection would also take a failing endpoint out: keep it out of the way.
    return proxy_config([r], health={"consecutive_failures": 1000})


def active(svc: Service, up: HealthUpstream) -> str:
    """The proxy's own view of `up`'s active check, read in this process (no admin round trip,
    so the moment it changes is the moment the test sees)."""
    return next(h.active for h in svc.proxy.endpoint_health() if h.endpoint == up.key)


async def endpoint(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    versions = (await status(session))["routes"][0]["versions"]
    found: dict[str, Any] = next(e for e in versions["stable"]["endpoints"] if e["url"] == url)
    return found


async def get_n(port: int, n: int) -> dict[int, int]:
    statuses: dict[int, int] = {}
    async with raw_client(port) as c:
        for _ in range(n):
            resp = await c.request("GET", "/")
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
    return statuses


async def test_endpoint_failing_its_check_is_out_before_a_client_request_fails(
    tmp_path: Path,
) -> None:
    async with run_health_upstream("a") as a, run_health_upstream("b") as b, \
            running_service(tmp_path, config(a, b)) as (svc, _), admin(svc) as session:
        await wait_until(lambda: len(a.probes) >= 1 and len(b.probes) >= 1, what="first probes")
        assert await get_n(svc.proxy_port, 20) == {200: 20}
        assert a.client_requests == 10 and b.client_requests == 10  # round robin, both in
        assert (await endpoint(session, a.url))["active"] == "up"

        # `a` goes bad: its health path first, its client paths would fail too.
        a.health_status = 503
        a.client_status = 500
        await wait_until(lambda: a.probes.count(503) >= 2, what="two failing probes")
        await wait_until(lambda: active(svc, a) == "down", what="a out of rotation")
        seen = a.client_requests
        # Every request from now on goes to `b`: none fails, none reaches `a`.
        assert await get_n(svc.proxy_port, 30) == {200: 30}
        assert a.client_requests == seen == 10
        assert b.client_requests == 40
        ep = await endpoint(session, a.url)
        assert (ep["up"], ep["active"], ep["passive"], ep["active_last_result"],
                ep["active_last_error"]) == (False, "down", "up", "failure", "status 503"), ep
        shown = render(Status.model_validate(await status(session)))  # `splitproxy status`
        assert f"shop/stable: {a.url} down on its health check (status 503)" in shown
        samples = await scrape(session)
        assert metric(samples, "splitproxy_endpoint_healthy", endpoint=a.key,
                      check="active") == 0
        assert metric(samples, "splitproxy_endpoint_healthy", endpoint=a.key,
                      check="passive") == 1
        assert metric(samples, "splitproxy_endpoint_healthy", endpoint=b.key,
                      check="active") == 1
        assert metric(samples, "splitproxy_endpoint_up", endpoint=a.key) == 0

        # Healthy again: back only after `healthy_threshold` (3) successes in a row. Probes
        # of one endpoint are sequential, so as the 3rd success arrives the proxy has judged 2
        # (still down), and as the 4th arrives it has judged 3 (up).
        a.client_status = 200
        a.proxy_view = lambda: active(svc, a)
        failed = len(a.probes)
        a.health_status = 200
        await wait_until(lambda: len(a.probes) >= failed + 4, what="four good probes")
        # `views` holds one entry per probe since `failed`: none ran between those lines.
        assert a.views[:4] == ["down", "down", "down", "up"], (a.views, a.probes)
        assert await get_n(svc.proxy_port, 20) == {200: 20}
        assert a.client_requests == seen + 10


async def test_a_probe_timeout_counts_as_a_failure(tmp_path: Path) -> None:
    async with run_health_upstream("a") as a, run_health_upstream("b") as b, \
            running_service(tmp_path, config(a, b, timeout="500ms")) as (svc, _), \
            admin(svc) as session:
        await wait_until(lambda: len(a.probes) >= 1, what="first probe")
        a.health_hangs = True
        await wait_until(lambda: active(svc, a) == "down", what="a out of rotation")
        ep = await endpoint(session, a.url)
        assert ep["active_last_error"] == "no answer within 0.5s", ep
        seen = a.client_requests
        assert await get_n(svc.proxy_port, 10) == {200: 10}
        assert a.client_requests == seen


async def test_with_workers_each_worker_probes_and_takes_the_endpoint_out(
    tmp_path: Path,
) -> None:
    async with run_health_upstream("a") as a, run_health_upstream("b") as b:
        cfg = config(a, b)
        cfg["listen"] = f"127.0.0.1:{free_port()}"  # workers share one port (SO_REUSEPORT)
        async with running_service(tmp_path, cfg, watch=False, workers=2,
                                   start_wait=WAIT * 2) as (svc, _):
            pool = svc.proxy
            assert isinstance(pool, WorkerPool)

            def every_worker(state: str) -> bool:
                views = [next((h.active for h in w.report.health if h.endpoint == a.key), "")
                         for w in pool._workers.values()]
                return len(views) == 2 and all(v == state for v in views)

            await wait_until(lambda: every_worker("up"), what="both workers probing a")
            a.health_status = 503
            a.client_status = 500
            await wait_until(lambda: every_worker("down"), what="a down in both workers")
            seen = a.client_requests
            assert await get_n(svc.proxy_port, 30) == {200: 30}
            assert a.client_requests == seen
            async with admin(svc) as session:
                ep = await endpoint(session, a.url)
            assert (ep["up"], ep["active"], ep["active_last_error"]) == (
                False, "down", "status 503"), ep


async def test_a_reload_without_the_check_stops_probing_and_brings_the_endpoint_back(
    tmp_path: Path,
) -> None:
    async with run_health_upstream("a") as a, run_health_upstream("b") as b:
        cfg = config(a, b)
        async with running_service(tmp_path, cfg) as (svc, path):
            a.health_status = 503
            await wait_until(lambda: active(svc, a) == "down", what="a out of rotation")
            del cfg["routes"][0]["health_check"]
            write_config(path, cfg)
            await wait_until(lambda: generation(svc) == 2, what="the reload")
            assert active(svc, a) == "off"
            assert await get_n(svc.proxy_port, 10) == {200: 10}
            assert a.client_requests == 5  # back in the round robin
            # No probe task is left: a new check on the same endpoint starts from up.
            cfg["routes"][0]["health_check"] = {**CHECK, "path": "/other"}
            write_config(path, cfg)
            await wait_until(lambda: generation(svc) == 3, what="the second reload")
            assert active(svc, a) == "up"
