"""The shadow's mismatch rate as an analysis input, end to end: a real Prometheus scrapes the
proxy's `splitproxy_shadow_requests_total`, the guard judges the canary's match rate as a
counts metric (the same sequential test as the error rate) while the canary serves no user
(weight 0, copies only: the route's `mirror`, or a rollout's `set_mirror` step). A canary
whose answers stop matching is aborted; /metrics shows the metric's verdict, estimate and
threshold, and the shipped dashboard's panels read them back from Prometheus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.configs import rollout_config
from tests.support.dashboard import panel_expr
from tests.support.exporter import metric_entry
from tests.support.load import Load, plain
from tests.support.processes import PrometheusServer
from tests.support.service import admin, metric, run_service, scrape, status, write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

SHADOW = 'splitproxy_shadow_requests_total{route="{{route}}",to="{{version}}"'
MATCHING = {"name": "shadow-match", "direction": "above", "threshold": 0.99,
            "events": SHADOW + ',result="match"}',
            "total": SHADOW + ',result=~"match|mismatch"}'}


COPIES: dict[str, dict[str, Any]] = {
    "route": {"mirror": {"to": "canary"}},
    "step": {"rollout": {"steps": [{"set_mirror": 100}, {"pause": {}}, {"set_weight": 100}]}},
}


@pytest.mark.parametrize("copies", list(COPIES))
async def test_a_canary_whose_shadow_answers_differ_is_aborted_before_serving_anyone(
        tmp_path: Path, prometheus: PrometheusServer, copies: str) -> None:
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, rollout_config(
            b, weights={"stable": 100, "canary": 0},
            analysis={"interval": "0.25s", "alpha": 0.05, "max_error_rate": None,
                      "prometheus_url": prometheus.url, "metrics": [MATCHING]},
            **COPIES[copies]))
        async with run_service(path, watch=False) as svc, admin(svc) as session, \
                Load(svc.proxy_port, {"a": plain}, gap=0.01).running() as load:
            await prometheus.start([f"127.0.0.1:{svc.admin_port}"])

            async def counted() -> bool:
                e = metric_entry(await status(session), "shadow-match")
                return bool(e and e["trials"] > 0)

            await wait_until(counted, timeout=30, what="shadow copies counted")
            matching = metric_entry(await status(session), "shadow-match")
            assert matching is not None and matching["misses"] == 0, matching
            shown = {"route": "shop", "version": "canary", "metric": "shadow-match"}
            samples = await scrape(session)
            assert metric(samples, "splitproxy_analysis_metric_estimate", **shown) == 1.0
            assert metric(samples, "splitproxy_analysis_metric_threshold", **shown) == 0.99

            async def panel(title: str, want: float) -> bool:
                result = await prometheus.query(panel_expr(title))
                return [(s["metric"].get("to", s["metric"].get("version")), float(s["value"][1]))
                        for s in result] == [("canary", want)]

            await wait_until(lambda: panel("Shadow match rate", 1.0), timeout=20,
                             what="the dashboard's match rate: every copy matches")
            b["canary"].fail_all = True  # the canary's answers: 5xx where stable's are 200

            async def aborted() -> bool:
                return bool((await status(session))["routes"][0]["rollout"]["phase"]
                            == "aborted")

            await wait_until(aborted, timeout=60, what="the abort", interval=0.1)
            body = await status(session)
            ro = body["routes"][0]["rollout"]
            assert ro["abort_reason"].startswith("guard: canary shadow-match "), \
                ro["abort_reason"]
            entry = metric_entry(body, "shadow-match")
            assert entry is not None and entry["misses"] > 0
            samples = await scrape(session)
            assert metric(samples, "splitproxy_analysis_metric_verdict", outcome="fail",
                          **shown) == 1
            await wait_until(lambda: panel("Custom metric verdicts", 2.0), timeout=20,
                             what="the dashboard's verdict panel: fail (2)")
    # Every client got the primary's (stable's) answer throughout.
    assert load.failures == [], load.failures[:3]
    assert b["canary"].requests > 0  # it got the copies, and only the copies
