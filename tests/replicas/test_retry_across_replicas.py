"""A retry belongs to its own run on every replica. The canary broke behind replica A only: the
judge (the lease holder, on the fleet's counts) aborted, both replicas took the abort. The
canary is fixed and an operator retries through B: A takes the retried run, and the retried
run is judged on traffic from the retry on, not on the errors that caused the abort."""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path

from tests.support.load import Load, plain
from tests.support.processes import RedisServer
from tests.support.replicas import Replica, replica_config, run_replicas
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

ANALYSIS = {"interval": "0.5s", "max_error_rate": 0.01}


async def test_a_retry_on_one_replica_after_an_abort_on_another_is_judged_afresh(
    tmp_path: Path, redis_server: RedisServer, key_prefix: str,
) -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = replica_config(ups, redis=redis_server, prefix=key_prefix, analysis=ANALYSIS)
        async with run_replicas(tmp_path, [cfg] * 2) as (a, b):
            loads = [Load(r.proxy_port, {"plain": plain}, gap=0.005) for r in (a, b)]
            async with contextlib.AsyncExitStack() as stack:
                for load in loads:
                    await stack.enter_async_context(load.running())

                async def has_pass(r: Replica, run: str | None = None) -> bool:
                    ro = await r.rollout()
                    return any(c["result"] == "pass" and (run is None or c["run"] == run)
                               for c in ro["checks"])

                for r in (a, b):  # the judge's checks are shared with every replica
                    await wait_until(partial(has_pass, r), timeout=15, interval=0.05,
                                     what=f"a passing check on {r.name}")

                ups["canary"].fail_behind = {a.proxy_port}

                async def aborted_on_both() -> bool:
                    return all([(await r.rollout())["phase"] == "aborted" for r in (a, b)])

                await wait_until(aborted_on_both, timeout=20, interval=0.05,
                                 what="the abort, on both replicas")
                aborted = await a.rollout()
                assert aborted["abort_reason"].startswith("guard: canary error rate ")
                assert aborted["aborted_by"] == "guard"

                ups["canary"].fail_behind = set()  # fixed
                code, body = await b.act("retry")
                assert code == 200, body
                retried_run = body["rollout"]["run"]
                assert retried_run != aborted["run"]

                async def a_took_the_retry() -> bool:
                    return bool((await a.rollout())["run"] == retried_run)

                await wait_until(a_took_the_retry, timeout=5, interval=0.02,
                                 what="A to take the retried run")
                # The new run is judged on traffic from the retry on: a pass, not a second
                # abort from the failures before it.
                await wait_until(lambda: has_pass(a, retried_run), timeout=15, interval=0.05,
                                 what="a passing check of the retried run on A")
                ro = await a.rollout()
                assert ro["phase"] == "idle", ro["abort_reason"]
                assert not [c for c in ro["checks"]
                            if c.get("run") == retried_run and c["result"] == "fail"]
                assert await a.canary_weight() == 50
                assert await a.metric("splitproxy_rollout_aborts_total", route="shop") == 1
