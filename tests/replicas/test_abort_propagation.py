"""Three replicas share one Redis. The canary breaks behind one replica that does not judge:
the lease holder judges the fleet's counts (every replica shares its counters through Redis),
aborts, and every replica stops sending traffic to the canary within 2 s of the abort."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from tests.support.load import Load, plain
from tests.support.processes import RedisServer
from tests.support.replicas import canary_hits, judge_of, replica_config, run_replicas
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

ANALYSIS = {"interval": "0.5s", "max_error_rate": 0.01}
PROPAGATION = 2.0  # every replica off the canary within 2 s of the abort


async def test_a_canary_broken_behind_one_replica_is_aborted_on_the_fleet_s_counts(
    tmp_path: Path, redis_server: RedisServer, key_prefix: str,
) -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = replica_config(ups, redis=redis_server, prefix=key_prefix, analysis=ANALYSIS)
        async with run_replicas(tmp_path, [cfg] * 3) as replicas:
            for r in replicas:
                assert (await r.store())["up"] is True
            judge = await judge_of(replicas)
            # Broken behind a replica that does not judge: only shared counts can catch it.
            broken = next(r for r in replicas if r is not judge)
            loads = {r.name: Load(r.proxy_port, {"plain": plain}, gap=0.005) for r in replicas}
            async with contextlib.AsyncExitStack() as stack:
                for load in loads.values():
                    await stack.enter_async_context(load.running())

                async def passed() -> bool:
                    guard = (await judge.rollout())["guard"]  # None before the first verdict
                    return guard is not None and bool(guard["outcome"] == "pass")

                await wait_until(passed, timeout=15, what="the judge's pass", interval=0.05)

                ups["canary"].fail_behind = {broken.proxy_port}
                broke_at = time.time()
                seen_at = 0.0

                async def aborted() -> bool:
                    nonlocal seen_at
                    if (await broken.rollout())["phase"] == "aborted":
                        seen_at = time.time()
                        return True
                    return False

                await wait_until(aborted, timeout=20, what="the abort", interval=0.02)
                decided = await judge.rollout()
                aborted_at = float(decided["aborted_at"])
                # The others' clients keep going: 20 answers each to requests sent after
                # every replica must be off the canary.
                await wait_until(
                    lambda: all(len(load.since(aborted_at + PROPAGATION)) >= 20
                                for load in loads.values()),
                    timeout=PROPAGATION + 5, what="20 answers each after the propagation bound")

            for load in loads.values():
                assert load.failures == [], load.failures[:5]

            assert broke_at <= aborted_at <= seen_at
            assert decided["abort_reason"].startswith("guard: canary error rate ")
            # The judge's own clients never saw a canary error: it judged the fleet's counts.
            assert [h for h in loads[judge.name].hits if h.status != 200] == []
            assert ups["canary"].by_proxy[broken.proxy_port] > 0
            [test] = decided["guard"]["tests"]
            assert test["outcome"] == "fail" and test["events"] > 0

            lags = {}
            for r in replicas:
                load = loads[r.name]
                before = [h for h in canary_hits(load.hits) if h.sent < broke_at]
                assert len(before) >= 10, f"{r.name} served too little canary traffic"
                last = max(h.done for h in canary_hits(load.hits))
                lags[r.name] = last - aborted_at
                assert last - aborted_at <= PROPAGATION, (
                    f"{r.name}: canary answered {last - aborted_at:.3f}s after the abort")
                after = [h for h in load.hits if h.sent > aborted_at + PROPAGATION]
                assert after and all(h.served_by == "stable" for h in after)
            print(f"abort decided {aborted_at - broke_at:.2f}s after the break; last canary "
                  "answer after the abort: "
                  + ", ".join(f"{n} {lag:+.3f}s" for n, lag in lags.items()))

            for r in replicas:
                ro = await r.rollout()
                assert ro["phase"] == "aborted", (r.name, ro)
                assert ro["abort_reason"] == decided["abort_reason"]
                assert ro["aborted_at"] == decided["aborted_at"]
                assert (await r.canary_weight()) == 0
            # One replica judged; the others took its decision (and show its checks).
            for r in replicas:
                if r is not judge:
                    assert await r.metric("splitproxy_analysis_checks_total", route="shop",
                                          result="fail") is None, r.name
            assert await judge.metric("splitproxy_analysis_checks_total", route="shop",
                                      result="fail") == 1
