"""Three replicas share one Redis. The canary breaks behind one of them only: that replica's
own analysis aborts, and every replica stops sending traffic to the canary within 2 s."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from .conftest import (
    Load,
    RedisServer,
    canary_hits,
    plain,
    replica_config,
    run_replicas,
    run_switch_upstreams,
    wait_until,
)

ANALYSIS = {"interval": "0.5s", "window": "3s", "min_requests": 10, "failure_limit": 2,
            "max_error_rate": 0.05}
PROPAGATION = 2.0  # the bound: every replica off the canary within 2 s of the abort


async def test_an_abort_by_one_replica_takes_the_canary_out_of_all_three_within_2s(
    tmp_path: Path, redis_server: RedisServer, key_prefix: str,
) -> None:
    async with run_switch_upstreams("stable", "canary") as ups:
        cfg = replica_config(ups, redis=redis_server, prefix=key_prefix, analysis=ANALYSIS)
        async with run_replicas(tmp_path, [cfg] * 3) as replicas:
            broken, others = replicas[0], replicas[1:]
            for r in replicas:
                assert (await r.store())["up"] is True
            loads = [Load(r.proxy_port, {"plain": plain}, gap=0.005) for r in replicas]
            async with contextlib.AsyncExitStack() as stack:
                for load in loads:
                    await stack.enter_async_context(load.running())

                # Healthy first: every replica's own analysis passes on its own traffic.
                async def all_passed() -> bool:
                    for r in replicas:
                        checks = (await r.rollout())["checks"]
                        if not any(c["result"] == "pass" for c in checks):
                            return False
                    return True

                await wait_until(all_passed, timeout=10, what="a passing check on each replica",
                                 interval=0.05)

                ups["canary"].fail_behind = {broken.proxy_port}
                broke_at = time.time()

                seen_at = 0.0

                async def broken_aborted() -> bool:
                    nonlocal seen_at
                    if (await broken.rollout())["phase"] == "aborted":
                        seen_at = time.time()
                        return True
                    return False

                await wait_until(broken_aborted, timeout=10, what="the broken replica's abort",
                                 interval=0.02)
                mine = await broken.rollout()
                await asyncio.sleep(PROPAGATION + 1.0)  # the others' clients keep going

            for load in loads:
                assert load.failures == [], load.failures[:5]

            aborted_at = float(mine["aborted_at"])
            assert broke_at <= aborted_at <= seen_at
            assert "failing checks in a row" in mine["abort_reason"]

            # The others never saw a canary error: only the broken replica's traffic failed.
            for r, load in zip(others, loads[1:], strict=True):
                bad = [h for h in load.hits if h.status != 200]
                assert bad == [], f"{r.name}: {bad[:3]}"
            assert ups["canary"].by_proxy[broken.proxy_port] > 0

            lags = {}
            for r, load in zip(others, loads[1:], strict=True):
                before = [h for h in canary_hits(load.hits) if h.sent < broke_at]
                assert len(before) >= 10, f"{r.name} served too little canary traffic"
                last = max(h.done for h in canary_hits(load.hits))
                lags[r.name] = last - seen_at
                # Measured from the abort's decision time too (earlier than /status shows it).
                assert last - aborted_at <= PROPAGATION, (
                    f"{r.name}: canary answered {last - aborted_at:.3f}s after the abort")
                after = [h for h in load.hits if h.sent > seen_at + PROPAGATION]
                assert after and all(h.served_by == "stable" for h in after)
            # The broken replica itself: nothing to the canary once its abort is in /status.
            assert all(h.served_by == "stable" for h in loads[0].since(seen_at))
            print(f"abort decided {aborted_at - broke_at:.2f}s after the break; last canary "
                  f"answer through the others, after the abort was in /status: "
                  + ", ".join(f"{n} {lag:+.3f}s" for n, lag in lags.items()))

            for r in replicas:
                ro = await r.rollout()
                assert ro["phase"] == "aborted", (r.name, ro)
                assert ro["abort_reason"] == mine["abort_reason"]
                assert ro["aborted_at"] == mine["aborted_at"]
                assert (await r.canary_weight()) == 0
            # Only the broken replica judged a failure; the others took its decision.
            for r in others:
                checks = (await r.rollout())["checks"]
                assert all(c["result"] != "fail" for c in checks), (r.name, checks)
