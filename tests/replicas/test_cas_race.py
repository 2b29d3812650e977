"""Two replicas act on the same rollout at the same moment: abort through one admin API,
promote through the other. The compare-and-set in Redis lets one write win; an abort is never
lost. Both replicas and Redis end on the same aborted state."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from splitproxy.rollout import RouteState
from tests.support.processes import RedisServer
from tests.support.replicas import Replica, StoreReads, replica_config, run_replicas
from tests.support.service import write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

STEPS = [{"set_weight": 20}, {"pause": {}}, {"set_weight": 50}, {"pause": {}}]
SHARED = ("phase", "step", "identity", "run", "pause_reason", "abort_reason", "aborted_at")
ROUNDS = 4


def seq(r: Replica) -> int:
    return r.svc.controller.engine.states["shop"].seq


async def stored(client: aioredis.Redis, prefix: str, identity: str) -> RouteState | None:
    raw = await client.get(f"{prefix}v2:route:shop:{identity}")
    return None if raw is None else RouteState.from_json(json.loads(raw))


async def settle(
    a: Replica, b: Replica, client: aioredis.Redis, prefix: str, *, phase: str,
    timeout: float = 5.0,
) -> tuple[dict[str, Any], RouteState]:
    """Waits until both replicas show the same rollout in `phase`, with the seq Redis holds."""
    last: list[tuple[dict[str, Any], dict[str, Any], RouteState | None]] = []

    async def agreed() -> bool:
        ra, rb = await asyncio.gather(a.rollout(), b.rollout())
        st = await stored(client, prefix, ra["identity"])
        last[:] = [(ra, rb, st)]
        same = {k: ra[k] for k in SHARED} == {k: rb[k] for k in SHARED}
        return (same and ra["phase"] == phase and st is not None and st.phase == phase
                and seq(a) == seq(b) == st.seq)

    def disagreement() -> str:
        ra, rb, st = last[0]
        return (f"agreement on {phase}:\n{a.name}: {  {k: ra[k] for k in SHARED} } seq "
                f"{seq(a)}\n{b.name}: {  {k: rb[k] for k in SHARED} } seq {seq(b)}\n"
                f"redis: {st}")

    await wait_until(agreed, timeout, disagreement, interval=0.02)
    ra, _, st = last[0]
    assert st is not None
    return ra, st


async def test_abort_and_promote_at_once_on_two_replicas_end_aborted_on_both(
    tmp_path: Path, redis_server: RedisServer, redis_client: aioredis.Redis,
    key_prefix: str,
) -> None:
    async with run_upstreams("stable", "canary") as ups:
        def config(revision: str) -> dict[str, Any]:
            return replica_config(ups, redis=redis_server, prefix=key_prefix,
                                  weights={"stable": 100, "canary": 0},
                                  rollout={"revision": revision, "steps": STEPS})

        async with run_replicas(tmp_path, [config("round-0")] * 2) as (a, b):
            reads = StoreReads((a, b))
            outcomes, writes = [], []
            for i in range(ROUNDS):
                if i:  # a fresh rollout for each round: a new revision on both replicas
                    for r in (a, b):
                        write_config(r.svc.path, config(f"round-{i}"))
                        assert r.svc.controller.reload()
                waiting, before = await settle(a, b, redis_client, key_prefix, phase="paused")
                assert (waiting["revision"], waiting["pause_reason"], waiting["step"]) == (
                    f"round-{i}", "waiting for promote", 1)
                abort = a.act("abort", reason=f"race {i}")
                promote = b.act("promote", full="1")
                if i % 2 == 0:
                    (ca, ja), (cb, jb) = await asyncio.gather(abort, promote)
                else:
                    (cb, jb), (ca, ja) = await asyncio.gather(promote, abort)
                assert ca == 200, ja  # nothing can make the abort itself refused
                assert cb in (200, 409), jb
                outcomes.append((ca, cb))

                final, st = await settle(a, b, redis_client, key_prefix, phase="aborted")
                assert final["abort_reason"] == f"manual: race {i}"
                assert st.seq > before.seq
                # +1: the abort won the compare-and-set; +2: the promote won and the abort
                # was applied again on top of it.
                writes.append(st.seq - before.seq)
                await reads.again()  # both read the store again: nothing flips back
                again, st2 = await settle(a, b, redis_client, key_prefix, phase="aborted",
                                          timeout=0.5)
                assert {k: again[k] for k in SHARED} == {k: final[k] for k in SHARED}
                assert st2 == st
                for r in (a, b):
                    assert await r.canary_weight() == 0
            print("abort/promote HTTP codes per round:", outcomes, "seq steps:", writes)
            # At least one round was a real conflict: both actions accepted locally, and the
            # compare-and-set had to settle it.
            assert any(o == (200, 200) for o in outcomes), outcomes
            # No write beyond the two the race can need (no flapping between replicas).
            assert set(writes) <= {1, 2}, writes


async def test_a_retry_through_one_replica_sticks_on_every_replica(
    tmp_path: Path, redis_server: RedisServer, redis_client: aioredis.Redis,
    key_prefix: str,
) -> None:
    """abort on A, then retry on B: a later decision, not a lost race. Every replica must take
    the retried rollout instead of putting the old abort back."""
    async with run_upstreams("stable", "canary") as ups:
        cfg = replica_config(ups, redis=redis_server, prefix=key_prefix,
                             weights={"stable": 100, "canary": 0}, rollout={"steps": STEPS})
        async with run_replicas(tmp_path, [cfg] * 2) as (a, b):
            reads = StoreReads((a, b))
            await settle(a, b, redis_client, key_prefix, phase="paused")
            code, body = await a.act("abort", reason="bad canary")
            assert code == 200, body
            await settle(a, b, redis_client, key_prefix, phase="aborted")
            code, body = await b.act("retry")
            assert code == 200, body
            retried, st = await settle(a, b, redis_client, key_prefix, phase="paused")
            assert (retried["pause_reason"], retried["step"]) == ("waiting for promote", 1)
            assert retried["abort_reason"] is None
            await reads.again()
            again, _ = await settle(a, b, redis_client, key_prefix, phase="paused", timeout=0.5)
            assert again["abort_reason"] is None
