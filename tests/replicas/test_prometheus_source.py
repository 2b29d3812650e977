"""`analysis.source: prometheus` against a real Prometheus scraping two replicas: each replica
judges the canary on the whole fleet's series, aborts a failing one, shows its PromQL in
/status, and treats an unreachable Prometheus as inconclusive (never as a failure).

Each replica keeps its state in its own file here (no Redis): each abort below is that
replica's own judgement, not a decision copied from the other one. Replica B gets only a
trickle of traffic, too little for any judgement on its own counters, so its aborts can only
come from the fleet-wide numbers Prometheus has."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from .conftest import (
    Load,
    PrometheusServer,
    Replica,
    plain,
    replica_config,
    run_replicas,
    run_switch_upstreams,
    wait_until,
)

WINDOW, MIN_REQUESTS = 10.0, 10


def analysis(prometheus: PrometheusServer) -> dict[str, Any]:
    return {"source": "prometheus", "prometheus_url": prometheus.url, "interval": "1s",
            "window": f"{WINDOW:g}s", "min_requests": MIN_REQUESTS, "failure_limit": 2,
            "max_error_rate": 0.05}


async def has_check(r: Replica, result: str, since: float = 0.0) -> bool:
    return any(c["result"] == result and c["time"] > since
               for c in (await r.rollout())["checks"])


async def test_prometheus_source_aborts_a_failing_canary_on_both_replicas(
    tmp_path: Path, prometheus: PrometheusServer,
) -> None:
    async with run_switch_upstreams("stable", "canary") as ups:
        cfg = replica_config(ups, redis=None, analysis=analysis(prometheus))
        async with run_replicas(tmp_path, [cfg] * 2) as replicas:
            a, b = replicas
            await prometheus.start([f"127.0.0.1:{r.admin_port}" for r in replicas])
            busy = Load(a.proxy_port, {"plain": plain}, gap=0.01)
            trickle = Load(b.proxy_port, {"plain": plain}, gap=1.0)
            async with contextlib.AsyncExitStack() as stack:
                for load in (busy, trickle):
                    await stack.enter_async_context(load.running())

                # Healthy: both pass, on numbers Prometheus scraped from both replicas.
                for r in replicas:
                    await wait_until(lambda r=r: has_check(r, "pass"), timeout=15,
                                     what=f"a passing Prometheus check on {r.name}",
                                     interval=0.1)
                ups_series = await prometheus.query('up{job="splitproxy"}')
                assert sorted(s["metric"]["instance"] for s in ups_series) == sorted(
                    f"127.0.0.1:{r.admin_port}" for r in replicas)
                assert all(s["value"][1] == "1" for s in ups_series)
                for r in replicas:
                    ro = await r.rollout()
                    assert ro["analysis_source"] == "prometheus"
                    shown = ro["prometheus"]
                    assert shown["error"] is None, shown
                    assert set(shown["queries"]) == {"canary", "stable"}
                    q = shown["queries"]["canary"]
                    assert 'splitproxy_requests_total{route="shop",version="canary"}' in \
                        q["requests"]
                    assert 'code=~"5.."' in q["errors"]
                    assert "histogram_quantile(0.99" in q["q0.99"]

                # The canary fails for everyone: each replica aborts on its own checks.
                ups["canary"].fail_all = True
                broke_at = time.time()

                async def aborted(r: Replica) -> bool:
                    return bool((await r.rollout())["phase"] == "aborted")

                for r in replicas:
                    await wait_until(lambda r=r: aborted(r), timeout=15,
                                     what=f"{r.name} to abort", interval=0.1)
                took = time.time() - broke_at
                await asyncio.sleep(0.5)

                for r in replicas:
                    ro = await r.rollout()
                    assert "failing checks in a row" in ro["abort_reason"], ro
                    assert ro["aborted_at"] > broke_at
                    assert await r.canary_weight() == 0
                # B's failing checks counted the fleet's canary requests, far more than B
                # itself sent to the canary in the same window.
                fails = [c for c in (await b.rollout())["checks"] if c["result"] == "fail"]
                assert len(fails) >= 2
                for c in fails:
                    own = sum(1 for h in trickle.hits
                              if h.served_by == "canary" and c["time"] - WINDOW <= h.sent
                              <= c["time"])
                    assert own < MIN_REQUESTS <= c["requests"], (own, c)

                # Prometheus gone, canary healthy again: retried rollouts stay up, blind.
                ups["canary"].fail_all = False
                await prometheus.stop()
                retried_at = time.time()
                for r in replicas:
                    code, body = await r.act("retry")
                    assert code == 200, body
                await asyncio.sleep(3.5)
                for r in replicas:
                    ro = await r.rollout()
                    assert ro["phase"] != "aborted", ro
                    after = [c for c in ro["checks"] if c["time"] > retried_at]
                    assert len(after) >= 2, after
                    assert all(c["result"] == "inconclusive" for c in after), after
                    reasons = {m["reason"] for c in after for m in c["metrics"]}
                    assert all("prometheus query failed" in x for x in reasons), reasons
                    assert "prometheus query failed" in ro["prometheus"]["error"]
                    assert ro["consecutive_failures"] == 0
                    assert await r.canary_weight() == 50

            for load in (busy, trickle):
                assert load.failures == [], load.failures[:5]
            print(f"both replicas aborted within {took:.2f}s of the canary failing")
