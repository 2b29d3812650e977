"""/metrics scraped over HTTP and parsed with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.samples import Sample

from splitproxy import __version__
from splitproxy.dataplane import cpuidle
from tests.support.configs import proxy_config, route, split_config
from tests.support.load import served_by
from tests.support.rawhttp import raw_client
from tests.support.service import admin, metric, running_service, scrape, write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import WAIT, wait_until

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KINDS = {"connect", "timeout", "reset", "protocol", "tls"}


def buckets(samples: list[Sample], version: str) -> dict[float, float]:
    return {
        float(s.labels["le"]): s.value
        for s in samples
        if s.name == "splitproxy_request_duration_seconds_bucket"
        and s.labels["version"] == version
    }


async def test_request_counters_histogram_and_gauges(tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = split_config(ups)
        async with running_service(tmp_path, cfg) as (svc, _), admin(svc) as session:
            async with raw_client(svc.proxy_port) as c:
                assert await served_by(c, 50) == {"stable": 45, "canary": 5}
                assert (await c.request("GET", "/status/404")).status == 404
                assert (await c.request("GET", "/status/503")).status == 503
            samples = await scrape(session)

    def requests(version: str, code: str) -> float | None:
        return metric(samples, "splitproxy_requests_total", route="shop", version=version,
                      code=code)

    assert requests("stable", "200") == 45
    assert requests("canary", "200") == 5
    others = sum(
        s.value for s in samples
        if s.name == "splitproxy_requests_total" and s.labels["code"] in ("404", "503")
    )
    assert others == 2
    for s in samples:
        if s.name == "splitproxy_requests_total":
            assert set(s.labels) == {"route", "version", "code"}

    for version in ("stable", "canary"):
        hist = buckets(samples, version)
        assert sorted(hist) == [*BOUNDS, math.inf]
        values = [hist[b] for b in sorted(hist)]
        assert values == sorted(values), "buckets are cumulative"
        answered = sum(
            s.value for s in samples
            if s.name == "splitproxy_requests_total" and s.labels["version"] == version
        )
        count = metric(samples, "splitproxy_request_duration_seconds_count", version=version)
        assert hist[math.inf] == count == answered
        total = metric(samples, "splitproxy_request_duration_seconds_sum", version=version)
        assert total is not None and 0 < total < answered * 1.0
        assert hist[1.0] == answered  # local upstreams answer in well under a second

        errors = {
            s.labels["kind"]: s.value for s in samples
            if s.name == "splitproxy_upstream_errors_total" and s.labels["version"] == version
        }
        assert errors == dict.fromkeys(KINDS, 0.0)
        assert metric(samples, "splitproxy_requests_in_flight", version=version) == 0

    assert metric(samples, "splitproxy_route_weight", route="shop", version="stable") == 90
    assert metric(samples, "splitproxy_route_weight", route="shop", version="canary") == 10
    for name in ("stable", "canary"):
        endpoint = f"127.0.0.1:{ups[name].port}"
        assert metric(samples, "splitproxy_endpoint_up", route="shop", version=name,
                      endpoint=endpoint) == 1
    assert metric(samples, "splitproxy_config_reloads_total", result="success") == 0
    assert metric(samples, "splitproxy_config_reloads_total", result="error") == 0
    assert metric(samples, "splitproxy_config_generation") == 1
    assert metric(samples, "splitproxy_build_info", version=__version__) == 1


async def test_in_flight_gauge_counts_a_slow_request(tmp_path: Path) -> None:
    async with run_upstreams("stable") as ups:
        cfg = proxy_config([route({"stable": ups["stable"].url})])
        async with running_service(tmp_path, cfg) as (svc, _), admin(svc) as session:
            async with raw_client(svc.proxy_port) as c:
                slow = asyncio.create_task(c.request("GET", "/slow?delay=0.3"))
                await wait_until(lambda: ups["stable"].in_flight == 1, WAIT, "slow request")
                during = await scrape(session)
                assert (await asyncio.wait_for(slow, WAIT)).status == 200
            after = await scrape(session)
    assert metric(during, "splitproxy_requests_in_flight", route="shop", version="stable") == 1
    assert metric(after, "splitproxy_requests_in_flight", route="shop", version="stable") == 0
    hist = buckets(after, "stable")
    # 0.3 s upstream time, measured head received -> response complete: in (0.25, 0.5].
    assert hist[0.25] == 0 and hist[0.5] == 1, hist


async def test_dead_canary_is_blamed_for_its_own_502s(
    tmp_path: Path, refused_port: Callable[[], int]
) -> None:
    async with run_upstreams("stable") as ups:
        dead = f"http://127.0.0.1:{refused_port()}"
        cfg = split_config({"stable": ups["stable"].url, "canary": dead})
        async with running_service(tmp_path, cfg) as (svc, _), admin(svc) as session:
            statuses: dict[int, int] = {}
            for _ in range(20):
                async with raw_client(svc.proxy_port) as c:
                    resp = await c.request("GET", "/")
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            samples = await scrape(session)
    assert statuses == {200: 18, 502: 2}
    assert metric(samples, "splitproxy_requests_total", version="canary", code="502") == 2
    assert metric(samples, "splitproxy_requests_total", version="canary", code="200") is None
    assert metric(samples, "splitproxy_requests_total", version="stable", code="200") == 18
    assert metric(samples, "splitproxy_requests_total", version="stable", code="502") is None
    assert metric(samples, "splitproxy_upstream_errors_total", version="canary",
                  kind="connect") == 2
    assert metric(samples, "splitproxy_upstream_errors_total", version="stable",
                  kind="connect") == 0
    assert metric(samples, "splitproxy_request_duration_seconds_count", version="canary") == 2
    # The only endpoint of a version is never ejected.
    assert metric(samples, "splitproxy_endpoint_up", version="canary") == 1


async def test_metrics_follow_a_reload(tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = split_config(ups)
        async with running_service(tmp_path, cfg) as (svc, path), admin(svc) as session:
            cfg["routes"][0]["weights"] = {"stable": 25, "canary": 75}
            write_config(path, cfg)

            async def generation_two() -> bool:
                return metric(await scrape(session), "splitproxy_config_generation") == 2

            await wait_until(generation_two, 2.0, "generation 2 in /metrics")
            samples = await scrape(session)
    assert metric(samples, "splitproxy_route_weight", version="stable") == 25
    assert metric(samples, "splitproxy_route_weight", version="canary") == 75
    assert metric(samples, "splitproxy_config_reloads_total", result="success") == 1


async def test_the_busy_poll_window_is_what_auto_chose_here_and_follows_a_reload(
        tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = split_config(ups)
        async with running_service(tmp_path, cfg) as (svc, path), admin(svc) as session:
            before = await scrape(session)
            cfg["performance"] = {"busy_poll": "20us"}
            write_config(path, cfg)

            async def generation_two() -> bool:
                return metric(await scrape(session), "splitproxy_config_generation") == 2

            await wait_until(generation_two, 2.0, "generation 2 in /metrics")
            after = await scrape(session)
    window = "splitproxy_busy_poll_window_seconds"
    assert metric(before, window) == cpuidle.choose("auto").window
    assert metric(after, window) == pytest.approx(20e-6)
