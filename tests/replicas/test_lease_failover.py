"""The replica holding the lease runs the step timers for everyone. Kill it mid-rollout: another
replica takes the lease and the steps go on, none applied twice and none skipped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from splitproxy.control.service import Service
from tests.support.processes import RedisServer
from tests.support.replicas import Replica, replica_config, run_replicas
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

PAUSE = 2.0
STEPS = [{"set_weight": 10}, {"pause": f"{PAUSE}s"}, {"set_weight": 30}, {"pause": f"{PAUSE}s"},
         {"set_weight": 60}, {"pause": f"{PAUSE}s"}]
# What each step index shows once reached: (phase, canary weight).
AT_STEP = {1: ("progressing", 10), 2: ("progressing", 10), 3: ("progressing", 30),
           4: ("progressing", 30), 5: ("progressing", 60), 6: ("promoted", 100)}
EVENTS = ["step 1: set_weight 10", "step 2: pause of 2s over", "step 3: set_weight 30",
          "step 4: pause of 2s over", "step 5: set_weight 60", "step 6: pause of 2s over",
          "all steps done: promoted"]
LEASE = 1.0


@dataclass(frozen=True)
class Seen:
    t: float  # wall clock of the poll round
    step: int
    phase: str
    weight: int
    leader: bool


async def crash(svc: Service) -> None:
    """As a killed process: stops at once, and the lease is not handed over (it runs out)."""
    store = svc.controller.store
    store.is_leader = lambda: False  # type: ignore[method-assign]
    await svc.stop(drain=0)


@contextlib.asynccontextmanager
async def polling(replicas: list[Replica]) -> AsyncIterator[tuple[dict[str, list[Seen]],
                                                                   list[list[str]]]]:
    """Every 50 ms, /status of every live replica in one round: what each showed, and which
    replicas said they lead in each round."""
    seen: dict[str, list[Seen]] = {r.name: [] for r in replicas}
    leaders: list[list[str]] = []
    stop = asyncio.Event()

    async def one(r: Replica) -> Seen | None:
        if r.svc.proxy.draining:
            return None
        body = await r.status()
        shop = body["routes"][0]
        ro = shop["rollout"]
        return Seen(time.time(), ro["step"], ro["phase"],
                    shop["versions"]["canary"]["effective_weight"],
                    body["state_store"]["leader"])

    async def loop() -> None:
        while not stop.is_set():
            results = await asyncio.gather(*(one(r) for r in replicas), return_exceptions=True)
            lead = []
            for r, s in zip(replicas, results, strict=True):
                if isinstance(s, Seen):
                    seen[r.name].append(s)
                    if s.leader:
                        lead.append(r.name)
            leaders.append(lead)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    try:
        yield seen, leaders
    finally:
        stop.set()
        await task


def last(seen: list[Seen]) -> Seen | None:
    return seen[-1] if seen else None


@pytest.mark.parametrize("how", ["crash", "graceful"])
async def test_the_lease_passes_on_and_the_steps_continue_when_its_holder_dies(
    tmp_path: Path, redis_server: RedisServer, key_prefix: str, how: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="splitproxy.rollout")
    async with run_upstreams("stable", "canary") as ups:
        cfg = replica_config(ups, redis=redis_server, prefix=key_prefix, lease=f"{LEASE}s",
                             weights={"stable": 100, "canary": 0}, rollout={"steps": STEPS})
        async with run_replicas(tmp_path, [cfg] * 3) as replicas:
            async with polling(replicas) as (seen, leaders):

                def leading_at_step_3() -> Replica | None:
                    for r in replicas:
                        s = last(seen[r.name])
                        if s is not None and s.leader and s.step == 3:
                            return r
                    return None

                await wait_until(lambda: leading_at_step_3() is not None, 10,
                                 "a leader at step 3", interval=0.02)
                leader = leading_at_step_3()
                assert leader is not None
                # Mid-rollout: weight 30, in the middle of the second pause.
                killed_at = time.time()
                if how == "crash":
                    await crash(leader.svc)
                else:
                    await leader.svc.stop(drain=0)
                rest = [r for r in replicas if r is not leader]

                def promoted(r: Replica) -> bool:
                    s = last(seen[r.name])
                    return s is not None and s.phase == "promoted" and s.t > killed_at

                await wait_until(
                    lambda: all(promoted(r) for r in rest), 10,
                    lambda: f"promoted on {[r.name for r in rest]} after the kill: "
                            f"{ {r.name: last(seen[r.name]) for r in rest} }",
                    interval=0.02)
                # A few more polling rounds: still one leader at most.
                rounds = len(leaders)
                await wait_until(lambda: len(leaders) >= rounds + 5, what="5 more rounds")
            taken_at = min(s.t for r in rest for s in seen[r.name]
                           if s.t > killed_at and s.leader)

            takeover = taken_at - killed_at
            bound = LEASE + 1.0 if how == "crash" else 1.0
            assert takeover <= bound, f"lease taken over {takeover:.2f}s after the kill"
            # Never two leaders at once (each round asks every live replica).
            assert all(len(lead) <= 1 for lead in leaders), [ld for ld in leaders if len(ld) > 1]

            for r in rest:
                obs = seen[r.name]
                steps = [s.step for s in obs]
                assert steps == sorted(steps), f"{r.name}: step went backwards: {steps}"
                for s in obs:
                    if s.step in AT_STEP:
                        assert (s.phase, s.weight) == AT_STEP[s.step], (r.name, s)
                weights = [s.weight for s in obs if s.step >= 1]
                changes = [w for i, w in enumerate(weights) if i == 0 or w != weights[i - 1]]
                assert changes == [10, 30, 60, 100], f"{r.name}: weights {changes}"
                first = {w: min(s.t for s in obs if s.weight == w) for w in (30, 60, 100)}
                assert first[60] > killed_at  # a later step, made by the new leader
                # Each pause took its 2 s: none skipped by a double step, none restarted.
                for a, b in ((30, 60), (60, 100)):
                    gap = first[b] - first[a]
                    assert PAUSE - 0.25 <= gap <= PAUSE + LEASE + 0.5, (r.name, a, b, gap)

            # Every step was carried out exactly once in the whole fleet.
            events = [m for rec in caplog.records if rec.name == "splitproxy.rollout"
                      for m in [rec.getMessage()] if "route=shop" in m]
            for event in EVENTS:
                n = sum(1 for m in events if m.endswith(event))
                assert n == 1, f"{event!r} logged {n} times:\n" + "\n".join(events)
            print(f"{how}: leader {leader.name} stopped at step 3; lease taken over after "
                  f"{takeover:.2f}s")
