"""`analysis.prometheus`: label matchers against a real Prometheus scraping two fleets that
serve a route of the same name (each fleet counts only its own), and credentials through a
real aiohttp server in front of that Prometheus that checks the Authorization header."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from splitproxy.config.guard import BasicAuth, PrometheusQuery
from splitproxy.config.models import Config
from splitproxy.control.sources.custom import TOTAL, CustomReader
from splitproxy.control.sources.prometheus import PrometheusSource
from splitproxy.rollout.tally import REQUESTS, Series
from tests.support.load import Load, hit, plain
from tests.support.processes import PrometheusServer
from tests.support.replicas import Replica, replica_config, run_replicas
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until


def requests(series: dict[Series, float] | None) -> int:
    """All requests of every version in a reading."""
    assert series is not None
    return int(sum(n for (_, kind, _), n in series.items() if kind == REQUESTS))


async def read(source: PrometheusSource, where: PrometheusQuery) -> dict[Series, float]:
    series, _, error = await source.counters(where, "shop", False)
    assert error is None, error
    assert series is not None
    return series


@contextlib.asynccontextmanager
async def two_fleets(tmp_path: Path, prometheus: PrometheusServer,
                     ) -> AsyncIterator[tuple[Replica, Replica]]:
    """Two replicas, each its own fleet (no shared state), both serving route "shop",
    scraped by one Prometheus as namespace "prod" and namespace "staging"."""
    async with run_upstreams("stable", "canary") as ups:
        cfg = replica_config(ups, redis=None)
        async with run_replicas(tmp_path, [cfg, cfg]) as (prod, staging):
            await prometheus.start(
                [f"127.0.0.1:{r.admin_port}" for r in (prod, staging)],
                labels={f"127.0.0.1:{prod.admin_port}": {"namespace": "prod"},
                        f"127.0.0.1:{staging.admin_port}": {"namespace": "staging"}})
            yield prod, staging


async def test_label_matchers_read_one_fleet_only(
    tmp_path: Path, prometheus: PrometheusServer,
) -> None:
    source = PrometheusSource()
    prod_only = PrometheusQuery(url=prometheus.url,
                                labels={"namespace": "prod", "job": "splitproxy"})
    staging_only = PrometheusQuery(url=prometheus.url, labels={"namespace": "staging"})
    both = PrometheusQuery(url=prometheus.url)
    try:
        async with two_fleets(tmp_path, prometheus) as (prod, staging):
            await hit(prod.proxy_port, 7)
            await hit(staging.proxy_port, 30)

            async def scraped() -> bool:
                return requests(await read(source, both)) == 37

            await wait_until(scraped, timeout=20, interval=0.2, what="both fleets scraped")
            prod_series = await read(source, prod_only)
            staging_series = await read(source, staging_only)
    finally:
        await source.close()
    assert requests(prod_series) == 7
    assert requests(staging_series) == 30
    assert all("namespace=prod" in which for (_, _, which) in prod_series)


@dataclass
class Gate:
    """A small aiohttp server in front of Prometheus: a query with the expected
    Authorization header is passed on, any other is refused with 401."""

    prometheus: str
    expected: str
    port: int = 0
    seen: list[str | None] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization")
        self.seen.append(given)
        if given != self.expected:
            return web.Response(status=401, text="unauthorized\n",
                                headers={"WWW-Authenticate": 'Basic realm="prometheus"'})
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(self.prometheus + request.path_qs) as resp:
                    return web.Response(status=resp.status, body=await resp.read(),
                                        content_type="application/json")
        except aiohttp.ClientError:  # Prometheus not started yet
            return web.Response(status=502, text="prometheus unreachable\n")


@contextlib.asynccontextmanager
async def run_gate(prometheus: str, expected: str) -> AsyncIterator[Gate]:
    gate = Gate(prometheus, expected)
    app = web.Application()
    app.router.add_get("/api/v1/query", gate.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    gate.port = int(runner.addresses[0][1])
    try:
        yield gate
    finally:
        await runner.cleanup()


async def test_a_bearer_token_from_a_file_is_sent_and_a_wrong_one_is_reported(
    tmp_path: Path, prometheus: PrometheusServer,
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")  # a trailing newline, as `kubectl create secret` makes
    source = PrometheusSource()
    try:
        async with two_fleets(tmp_path, prometheus) as (prod, _), \
                run_gate(prometheus.url, "Bearer s3cret-token") as gate:
            await hit(prod.proxy_port, 5)
            where = PrometheusQuery(url=gate.url, labels={"namespace": "prod"},
                                    bearer_token_file=str(token))

            async def scraped() -> bool:
                return requests(await read(source, where)) == 5

            await wait_until(scraped, timeout=20, interval=0.2, what="the count through auth")
            # A rotated secret applies at the next query; the old token is refused.
            token.write_text("rotated")
            series, shown, error = await source.counters(where, "shop", False)
            gate.expected = "Bearer rotated"
            assert requests(await read(source, where)) == 5
            missing = where.model_copy(update={"bearer_token_file": str(tmp_path / "nope")})
            _, _, unreadable = await source.counters(missing, "shop", False)
    finally:
        await source.close()
    assert series is None
    assert error is not None and "HTTP 401" in error and "bearer_token_file" in error
    assert "rotated" not in error and "s3cret" not in error and "s3cret" not in str(shown)
    assert {s for s in gate.seen} == {"Bearer s3cret-token", "Bearer rotated"}
    assert unreadable is not None and "cannot read" in unreadable and "nope" in unreadable


async def test_basic_auth_from_a_password_file(
    tmp_path: Path, prometheus: PrometheusServer,
) -> None:
    password = tmp_path / "password"
    password.write_text("pa:ss w0rd")
    expected = "Basic " + base64.b64encode(b"splitproxy:pa:ss w0rd").decode()
    source = PrometheusSource()
    try:
        async with two_fleets(tmp_path, prometheus) as (prod, _), \
                run_gate(prometheus.url, expected) as gate:
            await hit(prod.proxy_port, 4)
            where = PrometheusQuery(url=gate.url, labels={"namespace": "prod"}, basic_auth=(
                BasicAuth(username="splitproxy", password_file=str(password))))

            async def scraped() -> bool:
                return requests(await read(source, where)) == 4

            await wait_until(scraped, timeout=20, interval=0.2, what="the count through auth")
            unauthenticated = await source.counters(where.model_copy(update={
                "basic_auth": None}), "shop", False)
    finally:
        await source.close()
    assert set(gate.seen) == {expected, None}
    assert unauthenticated[2] is not None and "HTTP 401" in unauthenticated[2]


async def test_the_guard_judges_through_matchers_and_auth(
    tmp_path: Path, prometheus: PrometheusServer,
) -> None:
    """End to end: the config's `analysis.prometheus` reaches the query the guard sends."""
    token = tmp_path / "token"
    token.write_text("t0ken")
    async with run_upstreams("stable", "canary") as ups, \
            run_gate(prometheus.url, "Bearer t0ken") as gate:
        analysis: dict[str, Any] = {
            "source": "prometheus", "interval": "1s", "max_error_rate": 0.01,
            "prometheus": {"url": gate.url, "labels": {"namespace": "prod"},
                           "bearer_token_file": str(token)}}
        cfg = replica_config(ups, redis=None, analysis=analysis)
        async with run_replicas(tmp_path, [cfg]) as [r]:
            await prometheus.start([f"127.0.0.1:{r.admin_port}"],
                                   labels={f"127.0.0.1:{r.admin_port}": {"namespace": "prod"}})
            async def passed() -> bool:
                return any(c["result"] == "pass" for c in (await r.rollout())["checks"])

            async with Load(r.proxy_port, {"plain": plain}, gap=0.005).running():
                await wait_until(passed, timeout=30, interval=0.2, what="a passing check")
            shown = (await r.rollout())["prometheus"]
    assert shown["error"] is None, shown
    assert shown["queries"]["counters"].endswith(',route="shop",namespace="prod"}')
    assert set(gate.seen) == {"Bearer t0ken"}


async def test_custom_metrics_read_through_the_same_matchers_and_auth(
    tmp_path: Path, prometheus: PrometheusServer,
) -> None:
    """`analysis.prometheus` reaches the custom metrics too: their url, their credentials,
    and `{{labels}}` in their queries, so a fleet's metric is its own."""
    token = tmp_path / "token"
    token.write_text("t0ken")
    series = "splitproxy_requests_total{route=\"{{route}}\",version=\"{{version}}\"{{labels}}}"
    analysis: dict[str, Any] = {
        "max_error_rate": 0.01,
        "prometheus": {"labels": {"namespace": "prod"}, "bearer_token_file": str(token)},
        "metrics": [{"name": "ok", "events": series.replace("{{labels}}", ',code="200"'
                                                            "{{labels}}"),
                     "total": series, "threshold": 0.5, "direction": "above"}]}
    reader = CustomReader()
    try:
        async with two_fleets(tmp_path, prometheus) as (prod, staging), \
                run_gate(prometheus.url, "Bearer t0ken") as gate:
            await hit(prod.proxy_port, 6)
            await hit(staging.proxy_port, 20)
            cfg = {"routes": [{
                "name": "shop",
                "versions": {"stable": {"endpoints": ["http://127.0.0.1:9001"]},
                             "canary": {"endpoints": ["http://127.0.0.1:9002"]}},
                "weights": {"stable": 50, "canary": 50},
                "analysis": {**analysis, "prometheus": {**analysis["prometheus"],
                                                        "url": gate.url}}}]}
            route = Config.model_validate(cfg).routes[0]
            totals: dict[Series, float] = {}

            async def scraped() -> bool:
                fetched = (await reader.fetch(route, time.time()))["ok"]
                totals.clear()
                totals.update({k: v for k, v in (fetched.series or {}).items()
                               if k[1] == TOTAL})
                return sum(totals.values()) == 6

            await wait_until(scraped, timeout=20, interval=0.2, what="prod's six requests")
            shown = reader.shown["shop"]["ok"]
    finally:
        await reader.close()
    assert all("namespace=prod" in labels for (_, _, labels) in totals)
    assert shown["error"] is None
    assert shown["queries"]["canary total"] == (
        'splitproxy_requests_total{route="shop",version="canary",namespace="prod"}')
    assert set(gate.seen) == {"Bearer t0ken"}
