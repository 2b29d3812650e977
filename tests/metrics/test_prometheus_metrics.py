"""Custom metrics end to end: a real Prometheus scrapes the proxy and a test exporter, the
guard queries it (`analysis.metrics`) beside its own checks. A rising CPU-like gauge aborts, a
falling success rate aborts, a `dry_run` metric only reports, and a failed or empty query is
inconclusive: it holds a step, never passes it, and says why in /status and the CLI.

The tests judge with alpha 0.05 and blocks of 1 s (Prometheus scrapes every second), so that
a gauge decides within seconds rather than the minutes of the 1-minute default blocks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from tests.support.cli import cli
from tests.support.configs import rollout_config
from tests.support.exporter import Exporter, metric_entry, ramp, run_exporter
from tests.support.load import Load, plain
from tests.support.processes import PrometheusServer
from tests.support.service import admin, metric, run_service, scrape, status, write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

CPU = {"name": "cpu", "query": 'app_cpu_share{version="{{version}}"}', "threshold": 0.6,
       "direction": "below", "block": "1s"}
DELIVERY = {"name": "delivery", "direction": "above", "threshold": 0.99,
            "events": 'app_deliveries_total{version="{{version}}",outcome="ok"}',
            "total": 'app_deliveries_total{version="{{version}}"}'}


def analysis(prom: PrometheusServer, *metrics: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"interval": "0.25s", "alpha": 0.05, "max_error_rate": None,
            "prometheus_url": prom.url, "metrics": list(metrics), **kw}


@contextlib.asynccontextmanager
async def setup(tmp_path: Path, prom: PrometheusServer, exporter: Exporter,
                cfg_analysis: dict[str, Any], **route: Any) -> Any:
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, rollout_config(b, weights=route.pop("weights", {"stable": 50,
                                                                           "canary": 50}),
                                          analysis=cfg_analysis, **route))
        async with run_service(path, watch=False) as svc, admin(svc) as session:
            await prom.start([exporter.target, f"127.0.0.1:{svc.admin_port}"])
            yield svc, session


async def test_a_rising_cpu_gauge_aborts(tmp_path: Path, prometheus: PrometheusServer) -> None:
    async with run_exporter() as exporter, \
            setup(tmp_path, prometheus, exporter, analysis(prometheus, CPU)) as (svc, session):

        async def entry() -> dict[str, Any] | None:
            return metric_entry(await status(session), "cpu")

        async def blocks(n: int) -> bool:
            e = await entry()
            return e is not None and e["blocks"] >= n

        await wait_until(lambda: blocks(3), timeout=30, what="three blocks of healthy CPU")
        healthy = await entry()
        assert healthy is not None and healthy["worse"] == 0, healthy
        ro = (await status(session))["routes"][0]["rollout"]
        assert ro["metric_queries"]["cpu"] == {"queries": {
            "stable": 'app_cpu_share{version="stable"}',
            "canary": 'app_cpu_share{version="canary"}'}, "error": None}

        rising = asyncio.create_task(ramp(exporter, "canary", 0.3, 0.9, 3.0))
        began = time.monotonic()

        async def aborted() -> bool:
            return bool((await status(session))["routes"][0]["rollout"]["phase"] == "aborted")

        await wait_until(aborted, timeout=60, what="the abort", interval=0.1)
        took = time.monotonic() - began
        await rising
        body = await status(session)
        ro = body["routes"][0]["rollout"]
        assert ro["abort_reason"].startswith("guard: canary cpu "), ro["abort_reason"]
        assert " > 0.6: e=" in ro["abort_reason"]
        assert body["routes"][0]["versions"]["canary"]["effective_weight"] == 0
        failed = metric_entry(body, "cpu")
        assert failed is not None
        assert (failed["outcome"], failed["kind"], failed["dry_run"]) == ("fail", "gauge", False)
        assert failed["worse"] >= 9 and failed["last"] > 0.6
        assert ro["guard"]["decided_by"] == "canary:metric:cpu"
        # The CLI shows it beside the built-in checks.
        run = await cli("status", "--admin", f"http://127.0.0.1:{svc.admin_port}")
        assert run.code == 0, run.err
        assert "  canary cpu " in run.out and "> 0.6: e=" in run.out
        print(f"aborted {took:.1f}s after the canary's CPU began to rise")


async def test_a_falling_success_rate_aborts_beside_the_prometheus_error_rate(
        tmp_path: Path, prometheus: PrometheusServer) -> None:
    cfg = analysis(prometheus, DELIVERY, source="prometheus", max_error_rate=0.2)
    async with run_exporter() as exporter, \
            setup(tmp_path, prometheus, exporter, cfg) as (svc, session), \
            Load(svc.proxy_port, {"a": plain}, gap=0.01).running() as load:

        async def counted() -> bool:
            body = await status(session)
            guard = body["routes"][0]["rollout"]["guard"]
            e = metric_entry(body, "delivery")
            return bool(guard and guard["tests"][0]["trials"] > 0 and e and e["trials"] > 0)

        await wait_until(counted, timeout=30, what="deliveries and requests counted")
        exporter.failing["canary"] = 0.2  # the canary's success rate falls to 80%

        async def aborted() -> bool:
            return bool((await status(session))["routes"][0]["rollout"]["phase"] == "aborted")

        await wait_until(aborted, timeout=60, what="the abort", interval=0.1)
        body = await status(session)
        ro = body["routes"][0]["rollout"]
        assert ro["abort_reason"].startswith("guard: canary delivery "), ro["abort_reason"]
        assert " < 99%: e=" in ro["abort_reason"] and "misses)" in ro["abort_reason"]
        entry = metric_entry(body, "delivery")
        assert entry is not None and entry["kind"] == "counts"
        assert entry["estimate"] < 0.99 and entry["threshold"] == 0.99
        assert entry["events"] + entry["misses"] == entry["trials"]
        # Exact differences of the raw counters: never more than the exporter counted.
        delivered = sum(n for (v, _), n in exporter.delivered.items() if v == "canary")
        assert 0 < entry["trials"] <= delivered
        # The built-in error rate was judged on the proxy's counters, scraped by Prometheus.
        [builtin] = ro["guard"]["tests"]
        assert builtin["metric"] == "error_rate" and builtin["trials"] > 0
        assert ro["prometheus"]["error"] is None
    assert load.failures == [], load.failures[:3]


async def test_a_dry_run_metric_is_judged_and_shown_but_never_aborts(
        tmp_path: Path, prometheus: PrometheusServer) -> None:
    dry = {**CPU, "dry_run": True}
    async with run_exporter(cpu={"stable": 0.3, "canary": 0.9}) as exporter, \
            setup(tmp_path, prometheus, exporter, analysis(prometheus, dry)) as (svc, session):

        async def failing() -> bool:
            e = metric_entry(await status(session), "cpu")
            return e is not None and e["outcome"] == "fail"

        await wait_until(failing, timeout=60, what="the dry-run metric's failing verdict")
        # The same state that shows the failing verdict: it aborted nothing.
        body = await status(session)
        ro = body["routes"][0]["rollout"]
        entry = metric_entry(body, "cpu")
        assert entry is not None and (entry["outcome"], entry["dry_run"]) == ("fail", True)
        assert ro["phase"] == "idle" and ro["abort_reason"] is None
        assert body["routes"][0]["versions"]["canary"]["effective_weight"] == 50
        assert ro["guard"]["outcome"] == "pass"
        assert ro["guard"]["summary"] == "nothing to judge: only dry-run metrics"
        assert any(c.get("dry_run_failed") == ["canary:metric:cpu"] for c in ro["checks"])
        run = await cli("status", "--admin", f"http://127.0.0.1:{svc.admin_port}")
        assert "  [dry run] canary cpu " in run.out
        # /metrics, for the dashboard: the gauge's verdict, its value and its threshold.
        samples = await scrape(session)
        shown = {"route": "shop", "version": "canary", "metric": "cpu"}
        assert metric(samples, "splitproxy_analysis_metric_verdict", outcome="fail",
                      **shown) == 1
        assert metric(samples, "splitproxy_analysis_metric_verdict", outcome="pass",
                      **shown) == 0
        assert metric(samples, "splitproxy_analysis_metric_threshold", **shown) == 0.6
        estimate = metric(samples, "splitproxy_analysis_metric_estimate", **shown)
        assert estimate is not None and estimate > 0.6


async def test_a_failed_or_empty_query_is_inconclusive_and_holds_the_step(
        tmp_path: Path, prometheus: PrometheusServer) -> None:
    broken = {**CPU, "name": "broken", "query": 'app_cpu_share{version="{{version}}"',
              "dry_run": True}
    ambiguous = {**CPU, "name": "ambiguous", "dry_run": True,  # ok and failed: 2 series
                 "query": 'app_deliveries_total{version="{{version}}"}'}
    steps = {"steps": [{"set_weight": 50}, {"pause": "1s"}, {"set_weight": 100}]}
    async with run_exporter(serve_cpu={"stable"}) as exporter, \
            setup(tmp_path, prometheus, exporter, analysis(prometheus, CPU, broken, ambiguous),
                  weights={"stable": 100, "canary": 0}, rollout=steps) as (svc, session):

        no_data = "canary: no data (the query returned no series)"

        async def waiting() -> bool:
            # Held, with the stable version's gauge read and the canary's missing.
            body = await status(session)
            cpu = metric_entry(body, "cpu")
            return bool(body["routes"][0]["rollout"]["pause_reason"] == "waiting for evidence"
                        and cpu is not None and cpu["error"] == no_data)

        await wait_until(waiting, timeout=30, what="the pause waiting for evidence")
        body = await status(session)
        ro = body["routes"][0]["rollout"]
        cpu = metric_entry(body, "cpu")
        assert cpu is not None
        assert (cpu["outcome"], cpu["blocks"]) == ("inconclusive", 0)
        assert cpu["error"] == no_data
        assert ro["guard"]["outcome"] == "inconclusive"
        assert ro["guard"]["decided_by"] == "canary:metric:cpu"
        bad = metric_entry(body, "broken")
        assert bad is not None and bad["outcome"] == "inconclusive"
        assert "prometheus query failed" in bad["error"] and "HTTP 400" in bad["error"]
        two = metric_entry(body, "ambiguous")
        assert two is not None and two["blocks"] == 0
        assert two["error"] == ("stable: 2 series: aggregate them to one number with sum, avg "
                                "or max; canary: 2 series: aggregate them to one number with "
                                "sum, avg or max")
        assert set(ro["checks"][-1]["metric_errors"]) == {"cpu", "broken", "ambiguous"}
        run = await cli("status", "--admin", f"http://127.0.0.1:{svc.admin_port}")
        assert f"(last reading: {no_data})" in run.out

        # The canary's gauge appears, healthy: the step passes on it and the rollout ends,
        # while the broken dry-run metric still says what is wrong with it.
        exporter.serve_cpu.add("canary")

        async def promoted() -> bool:
            return bool((await status(session))["routes"][0]["rollout"]["phase"]
                        == "promoted")

        await wait_until(promoted, timeout=60, what="the promotion", interval=0.1)
        body = await status(session)
        bad = metric_entry(body, "broken")
        assert bad is not None and "HTTP 400" in bad["error"]
