"""With `source: local` and Redis, one replica judges the whole fleet's counts, exactly.

Three replicas share one Redis; clients reach the canary through all of them. Every replica
publishes its counters under a key of its own with a TTL; the lease holder sums them. A
healthy canary passes and is never aborted, and once the clients stop, the judge has counted
exactly the canary answers all three replicas gave: no request lost, none counted twice."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import redis.asyncio as aioredis

from tests.support.load import Load, plain
from tests.support.processes import RedisServer
from tests.support.replicas import (
    Replica,
    canary_hits,
    judge_of,
    replica_config,
    run_replicas,
)
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

ANALYSIS = {"interval": "0.5s", "max_error_rate": 0.05}


async def test_a_healthy_canary_is_judged_once_on_the_exact_sum_of_every_replica_s_counts(
    tmp_path: Path, redis_server: RedisServer, redis_client: aioredis.Redis,
    key_prefix: str,
) -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = replica_config(ups, redis=redis_server, prefix=key_prefix, analysis=ANALYSIS)
        async with run_replicas(tmp_path, [cfg] * 3) as replicas:
            judge = await judge_of(replicas)
            loads = [Load(r.proxy_port, {"plain": plain}, gap=0.01) for r in replicas]
            async with contextlib.AsyncExitStack() as stack:
                for load in loads:
                    await stack.enter_async_context(load.running())

                async def passed() -> bool:
                    guard = (await judge.rollout())["guard"]  # None before the first verdict
                    return guard is not None and bool(guard["outcome"] == "pass")

                await wait_until(passed, timeout=15, what="the judge's pass", interval=0.05)
                await asyncio.sleep(1.0)
            answered = sum(len(canary_hits(load.hits)) for load in loads)
            assert all(len(canary_hits(load.hits)) > 0 for load in loads)

            async def counted_all() -> bool:
                [test] = (await judge.rollout())["guard"]["tests"]
                return bool(test["trials"] == answered)

            # Each replica publishes every interval, the judge reads every interval.
            await wait_until(counted_all, timeout=5, what=f"{answered} canary answers counted",
                             interval=0.1)
            for r in replicas:
                # The judge's evidence is shared: every replica shows the same verdict, once
                # it has read the judge's last write (pub/sub, or its re-read twice a second).
                async def shows_all(r: Replica = r) -> bool:
                    return bool((await r.rollout())["guard"]["tests"][0]["trials"] == answered)

                await wait_until(shows_all, timeout=5, interval=0.1,
                                 what=f"{r.name} to show the judge's {answered} answers")
                ro = await r.rollout()
                assert ro["phase"] == "idle", (r.name, ro["abort_reason"])
                assert ro["judging"] is (r is judge)
            assert await judge.metric("splitproxy_analysis_checks_total", route="shop",
                                      result="pass") is not None
            for r in replicas:
                if r is not judge:
                    assert await r.metric("splitproxy_analysis_checks_total", route="shop",
                                          result="pass") is None

            keys = [k.decode() async for k in
                    redis_client.scan_iter(f"{key_prefix}v2:counts:shop:*")]
            assert len(keys) == 3
            for key in keys:
                ttl = await redis_client.pttl(key)
                assert 0 < ttl <= 10_000, (key, ttl)  # refreshed each interval
