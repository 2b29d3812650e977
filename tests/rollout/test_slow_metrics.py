"""A slow metrics backend delays nothing and undoes nothing.

A real Service judges its canary on a fake Prometheus (a real HTTP server on 127.0.0.1) that
answers healthy numbers only after 1 s per query. The rollout's clock is a `ManualClock` the
test moves; the data plane, the admin API and Prometheus' answers run in real time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from splitproxy.control import readings
from tests.support.configs import rollout_config
from tests.support.engine import ManualClock
from tests.support.fakes import FakePrometheus, run_fake_prometheus
from tests.support.load import hit
from tests.support.service import admin, run_service, status, write_config
from tests.support.upstream import Upstream, run_upstreams
from tests.support.waiting import wait_until


def guarded(b: dict[str, Upstream], prometheus: FakePrometheus, **kw: Any) -> dict[str, Any]:
    return rollout_config(
        b, weights={"stable": 100, "canary": 0},
        analysis={"source": "prometheus", "prometheus_url": prometheus.url, "interval": "1s"},
        rollout={"steps": [{"set_weight": 20}, {"pause": {}}]}, **kw)


async def test_an_abort_posted_while_prometheus_answers_slowly_stays_aborted(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    async with run_upstreams("stable", "canary") as b, run_fake_prometheus(1.0) as prom:
        path = tmp_path / "shop.yaml"
        write_config(path, guarded(b, prom))
        async with run_service(path, watch=False, clock=clock) as svc:
            engine = svc.controller.engine
            # The first step does not wait for the first reading, which takes a second.
            await wait_until(lambda: engine.weights()["shop"]["canary"] == 20, what="step 1")
            assert prom.answered == 0
            await wait_until(lambda: prom.in_flight > 0, what="a query in flight")
            checks_before = len(engine.states["shop"].checks)

            async with admin(svc) as session:
                async with session.post("/routes/shop/abort", params={"reason": "bad"}) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["rollout"]["phase"] == "aborted"
                assert prom.answered == 0  # the reading is still in flight

                # The healthy reading lands after the abort: recorded, but it undoes nothing.
                await wait_until(lambda: len(engine.states["shop"].checks) > checks_before,
                                 what="the slow reading", timeout=10)
                late = engine.states["shop"].checks[-1]
                assert (late["result"], late["stale"]) == ("inconclusive", True)
                assert late["summary"] == "not judged: the rollout is aborted"
                assert engine.states["shop"].phase == "aborted"

                await clock.advance(20.0)  # 20 s of rollout time: timers, ticks, readings
                shop = (await status(session))["routes"][0]
            assert shop["rollout"]["phase"] == "aborted"
            assert shop["rollout"]["abort_reason"] == "manual: bad"
            assert shop["versions"]["canary"]["effective_weight"] == 0
            assert await hit(svc.proxy_port, 30) == {"stable": 30}


async def test_a_slow_prometheus_holds_no_other_route_s_steps_no_action_and_no_reload(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    async with run_upstreams("stable", "canary") as b, run_fake_prometheus(1.0) as prom:
        prom.held = asyncio.Event()  # no answer at all until the end
        cfg = guarded(b, prom)
        other = dict(cfg["routes"][0], name="other", match={"path_prefix": "/other"})
        other.pop("analysis")
        other["rollout"] = {"steps": [{"set_weight": 10}, {"pause": "5s"}, {"set_weight": 50},
                                      {"pause": {}}]}
        cfg["routes"].insert(0, other)
        path = tmp_path / "shop.yaml"
        write_config(path, cfg)
        async with run_service(path, watch=False, clock=clock) as svc:
            engine = svc.controller.engine
            await wait_until(lambda: prom.in_flight > 0, what="shop's first reading")
            await wait_until(lambda: engine.weights()["other"]["canary"] == 10, what="step 1")
            await clock.advance(5.0)
            assert engine.weights()["other"]["canary"] == 50
            assert (prom.in_flight, prom.answered) == (1, 0)  # shop's first reading (one query)
            # Nor an action on the route being read, nor a reload.
            async with admin(svc) as session:
                async with session.post("/routes/shop/promote", params={"full": "1"}) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["rollout"]["phase"] == "promoted"
            before = engine.states["other"].identity
            cfg["routes"][0]["rollout"] = {**other["rollout"], "revision": "v2"}
            write_config(path, cfg)
            assert svc.controller.reload()
            await wait_until(lambda: engine.states["other"].identity != before,
                             what="other's new rollout")
            await clock.advance(0.1)  # one timer tick: the new rollout's first step
            await wait_until(lambda: engine.states["other"].step == 1
                             and engine.weights()["other"]["canary"] == 10,
                             what="other's new rollout at its first step")
            assert prom.answered == 0
            prom.held.set()


async def test_a_dead_prometheus_gives_inconclusive_readings_within_their_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each reading has its own time limit (10 s; 0.5 s here): a backend that never answers
    makes every check inconclusive with the reason, and the rollout is neither held nor
    undone by it; the first answer after it is judged as usual."""
    monkeypatch.setattr(readings, "MEASURE_TIMEOUT", 0.5)
    clock = ManualClock()
    async with run_upstreams("stable", "canary") as b, run_fake_prometheus(0.0) as prom:
        prom.held = asyncio.Event()  # no answer at all until the end
        path = tmp_path / "shop.yaml"
        write_config(path, guarded(b, prom))
        async with run_service(path, watch=False, clock=clock) as svc:
            engine = svc.controller.engine

            def timed_out() -> list[dict[str, Any]]:
                return [c for c in engine.states["shop"].checks
                        if c.get("error") == "no reading within 0.5s"]

            await wait_until(lambda: engine.weights()["shop"]["canary"] == 20, what="step 1")
            await wait_until(lambda: len(timed_out()) == 1, timeout=5,
                             what="the first reading given up after 0.5 s")
            await clock.advance(1.0)  # the next interval: a new reading, given up in turn
            await wait_until(lambda: len(timed_out()) == 2, timeout=5,
                             what="the second reading given up")
            assert all(c["result"] == "inconclusive" for c in timed_out())
            state = engine.states["shop"]
            assert (state.phase, engine.weights()["shop"]["canary"]) == ("paused", 20)

            prom.held.set()  # Prometheus answers again
            answered = prom.answered
            await clock.advance(1.0)
            await wait_until(lambda: prom.answered > answered, timeout=5, what="an answer")
            await wait_until(lambda: engine.states["shop"].checks[-1].get("error") is None,
                             timeout=5, what="a reading judged again")
            assert engine.states["shop"].phase == "paused"
