"""Redis goes away under load: the data plane keeps serving with the last known state (0 failed
requests), /readyz stays ready, /status and splitproxy_state_store_up say the store is down.
Redis comes back (an empty one, on the same port): the replicas reconnect and converge on a
decision one of them made while it was gone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from tests.support.load import Load, plain
from tests.support.processes import RedisServer
from tests.support.replicas import canary_hits, replica_config, run_replicas
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

RECONVERGE = 12.0  # backoff tops out at 5 s between attempts


async def test_replicas_serve_through_a_redis_outage_and_converge_after_it(
    tmp_path: Path, redis_server: RedisServer, key_prefix: str,
) -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = replica_config(ups, redis=redis_server, prefix=key_prefix)
        async with run_replicas(tmp_path, [cfg] * 3) as replicas:
            actor, others = replicas[0], replicas[1:]
            for r in replicas:
                assert (await r.store())["up"] is True
                assert await r.metric("splitproxy_state_store_up") == 1
            loads = [Load(r.proxy_port, {"plain": plain}, gap=0.005) for r in replicas]
            async with contextlib.AsyncExitStack() as stack:
                for load in loads:
                    await stack.enter_async_context(load.running())
                await asyncio.sleep(0.5)

                await redis_server.stop()
                down_at = time.time()

                async def all_down() -> bool:
                    return all([(await r.store())["up"] is False for r in replicas])

                took = await wait_until(all_down, timeout=5, what="every replica to see Redis down",
                                        interval=0.05)
                for r in replicas:
                    store = await r.store()
                    assert store["backend"] == "redis"
                    assert store["error"], store
                    assert store["leader"] is False
                    assert await r.metric("splitproxy_state_store_up") == 0
                    assert await r.readyz() == 200
                    assert (await r.status())["ready"] is True

                # A decision made while the store is gone: applied locally at once.
                t0 = time.monotonic()
                acted_at = time.time()
                code, body = await actor.act("abort", reason="outage drill")
                act_took = time.monotonic() - t0
                assert code == 200, body
                assert body["rollout"]["phase"] == "aborted"
                assert act_took < 1.0, f"abort took {act_took:.2f}s with Redis down"
                assert await actor.canary_weight() == 0

                def canary_later(load: Load) -> bool:
                    return any(h.sent > acted_at + 2.5 for h in canary_hits(load.hits))

                # The others cannot know yet: they go on serving the canary, 2.5 s on (long
                # enough for the reconnect backoff to grow).
                await wait_until(lambda: all(canary_later(load) for load in loads[1:]),
                                 timeout=10, what="the others serving the canary 2.5 s on")
                for r in others:
                    assert (await r.rollout())["phase"] != "aborted"
                    assert await r.readyz() == 200
                    assert (await r.store())["up"] is False
                up_at = time.time()
                await redis_server.start()

                async def converged() -> bool:
                    for r in replicas:
                        store = await r.store()
                        if store["up"] is not True or store["error"] is not None:
                            return False
                        if (await r.rollout())["phase"] != "aborted":
                            return False
                    return True

                reconverged = await wait_until(converged, timeout=RECONVERGE,
                                               what="reconnect and converge", interval=0.05)
                settled = time.time()
                await wait_until(lambda: all(len(load.since(settled)) >= 50 for load in loads),
                                 what="50 answers on each replica once converged")

            for r, load in zip(replicas, loads, strict=True):
                assert load.failures == [], (r.name, load.failures[:5])
                bad = [h for h in load.hits if h.status != 200]
                assert bad == [], (r.name, len(bad), bad[:3])
                during = [h for h in load.hits if down_at <= h.sent <= up_at]
                assert len(during) > 100, (r.name, len(during))
            for r, load in zip(others, loads[1:], strict=True):
                # Served the canary all through the outage (last known state) ...
                assert canary_hits([h for h in load.hits if down_at <= h.sent <= up_at])
                # ... and not once converged.
                assert not canary_hits(load.since(settled)), r.name
            for r in replicas:
                ro = await r.rollout()
                assert ro["phase"] == "aborted"
                assert ro["abort_reason"] == "manual: outage drill"
                assert await r.canary_weight() == 0
                assert await r.metric("splitproxy_state_store_up") == 1
            print(f"down seen by all after {took:.2f}s; abort on {actor.name} took "
                  f"{act_took * 1000:.0f} ms; after restart, converged in {reconverged:.2f}s")
