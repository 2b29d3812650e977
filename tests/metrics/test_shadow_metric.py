"""The shadow's mismatch rate as an analysis input, end to end: a real Prometheus scrapes the
proxy's `splitproxy_shadow_requests_total`, the guard judges the canary's match rate as a
counts metric (the same sequential test as the error rate) while the canary serves no user
(weight 0, `mirror` only). A canary whose answers stop matching is aborted."""

from __future__ import annotations

from pathlib import Path

from tests.support.configs import rollout_config
from tests.support.exporter import metric_entry
from tests.support.load import Load, plain
from tests.support.processes import PrometheusServer
from tests.support.service import admin, run_service, status, write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

SHADOW = 'splitproxy_shadow_requests_total{route="{{route}}",to="{{version}}"'
MATCHING = {"name": "shadow-match", "direction": "above", "threshold": 0.99,
            "events": SHADOW + ',result="match"}',
            "total": SHADOW + ',result=~"match|mismatch"}'}


async def test_a_canary_whose_shadow_answers_differ_is_aborted_before_serving_anyone(
        tmp_path: Path, prometheus: PrometheusServer) -> None:
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, rollout_config(
            b, weights={"stable": 100, "canary": 0}, mirror={"to": "canary"},
            analysis={"interval": "0.25s", "alpha": 0.05, "max_error_rate": None,
                      "prometheus_url": prometheus.url, "metrics": [MATCHING]}))
        async with run_service(path, watch=False) as svc, admin(svc) as session, \
                Load(svc.proxy_port, {"a": plain}, gap=0.01).running() as load:
            await prometheus.start([f"127.0.0.1:{svc.admin_port}"])

            async def counted() -> bool:
                e = metric_entry(await status(session), "shadow-match")
                return bool(e and e["trials"] > 0)

            await wait_until(counted, timeout=30, what="shadow copies counted")
            matching = metric_entry(await status(session), "shadow-match")
            assert matching is not None and matching["misses"] == 0, matching
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
    # Every client got the primary's (stable's) answer throughout.
    assert load.failures == [], load.failures[:3]
    assert b["canary"].requests > 0  # it got the copies, and only the copies
