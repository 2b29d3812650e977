"""`analysis.source: prometheus` against a real Prometheus scraping two replicas that share
Redis: the lease holder judges the canary on the raw counters of the whole fleet (exact
differences between readings), aborts a failing one for both replicas, shows its PromQL in
/status, and treats an unreachable Prometheus as inconclusive (never as a failure).

The judge gets only a trickle of traffic itself, too little for any judgement on its own
counters: its verdicts can only come from the fleet-wide numbers Prometheus has."""

from __future__ import annotations

import asyncio
import contextlib
import time
from functools import partial
from pathlib import Path
from typing import Any

from tests.support.load import Load, plain
from tests.support.processes import PrometheusServer, RedisServer
from tests.support.replicas import Replica, canary_hits, judge_of, replica_config, run_replicas
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until


def analysis(prometheus: PrometheusServer) -> dict[str, Any]:
    return {"source": "prometheus", "prometheus_url": prometheus.url, "interval": "1s",
            "max_error_rate": 0.01}


async def has_check(r: Replica, result: str, since: float = 0.0) -> bool:
    return any(c["result"] == result and c["time"] > since
               for c in (await r.rollout())["checks"])


async def test_prometheus_source_aborts_a_failing_canary_on_both_replicas(
    tmp_path: Path, prometheus: PrometheusServer, redis_server: RedisServer, key_prefix: str,
) -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = replica_config(ups, redis=redis_server, prefix=key_prefix,
                             analysis=analysis(prometheus))
        async with run_replicas(tmp_path, [cfg] * 2) as replicas:
            await prometheus.start([f"127.0.0.1:{r.admin_port}" for r in replicas])
            judge = await judge_of(replicas)
            other = next(r for r in replicas if r is not judge)
            busy = Load(other.proxy_port, {"plain": plain}, gap=0.01)
            trickle = Load(judge.proxy_port, {"plain": plain}, gap=1.0)
            async with contextlib.AsyncExitStack() as stack:
                for load in (busy, trickle):
                    await stack.enter_async_context(load.running())

                # Healthy: a pass, on numbers Prometheus scraped from both replicas.
                for r in replicas:  # the judge's checks are shared with every replica
                    await wait_until(partial(has_check, r, "pass"), timeout=20,
                                     what=f"a passing Prometheus check on {r.name}",
                                     interval=0.1)
                ups_series = await prometheus.query('up{job="splitproxy"}')
                assert sorted(s["metric"]["instance"] for s in ups_series) == sorted(
                    f"127.0.0.1:{r.admin_port}" for r in replicas)
                assert all(s["value"][1] == "1" for s in ups_series)
                ro = await judge.rollout()
                assert ro["analysis_source"] == "prometheus"
                shown = ro["prometheus"]
                assert shown["error"] is None, shown
                # One instant query of the raw counters, not increase() over a window.
                assert shown["queries"] == {"counters": '{__name__=~"splitproxy_requests_total|'
                                            'splitproxy_upstream_timed_requests_total|'
                                            'splitproxy_upstream_slow_requests_total",'
                                            'route="shop"}'}
                assert (await other.rollout())["prometheus"] is None  # it does not judge

                # The canary fails for everyone: the judge aborts, for both replicas.
                ups["canary"].fail_all = True
                broke_at = time.time()

                async def aborted(r: Replica) -> bool:
                    return bool((await r.rollout())["phase"] == "aborted")

                for r in replicas:
                    await wait_until(partial(aborted, r), timeout=30,
                                     what=f"{r.name} to abort", interval=0.1)
                took = time.time() - broke_at
                await asyncio.sleep(0.5)

                for r in replicas:
                    ro = await r.rollout()
                    assert ro["abort_reason"].startswith("guard: canary error rate "), ro
                    assert ro["aborted_at"] > broke_at
                    assert await r.canary_weight() == 0
                # The judge counted the fleet's canary requests, far more than it sent itself.
                [test] = (await judge.rollout())["guard"]["tests"]
                own = len(canary_hits(trickle.hits))
                assert test["trials"] > 5 * own, (test, own)

                # Prometheus gone, canary healthy again: the retried rollout stays up, blind.
                ups["canary"].fail_all = False
                await prometheus.stop()
                retried_at = time.time()
                code, body = await other.act("retry")
                assert code == 200, body

                async def judged_twice() -> bool:
                    checks = (await judge.rollout())["checks"]
                    return len([c for c in checks if c["time"] > retried_at]) >= 2

                await wait_until(judged_twice, timeout=10, what="two checks after the retry",
                                 interval=0.1)
                for r in replicas:
                    ro = await r.rollout()
                    assert ro["phase"] != "aborted", ro
                    assert await r.canary_weight() == 50
                ro = await judge.rollout()
                after = [c for c in ro["checks"] if c["time"] > retried_at]
                assert len(after) >= 2, after
                assert all(c["result"] == "inconclusive" for c in after), after
                assert all("prometheus query failed" in c["error"] for c in after), after
                assert "prometheus query failed" in ro["prometheus"]["error"]

            for load in (busy, trickle):
                assert load.failures == [], load.failures[:5]
            print(f"aborted within {took:.2f}s of the canary failing")
