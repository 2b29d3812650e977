"""The rollout engine driven with a clock the test moves: `await h.tick(+1.0)` is one second.

Counters are fake (what the data plane would have counted); webhooks go to a real aiohttp
server on 127.0.0.1. No test here sleeps through an interval.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from splitproxy import rollout
from splitproxy.config.models import Config
from splitproxy.control.engine import TICK
from splitproxy.control.status import GuardTest, RateTest, RatioTest
from splitproxy.rollout import Actor, PauseReason, Phase
from splitproxy.rollout.fold import GATE_RETRY
from tests.support.configs import proxy_config, rollout_config, route
from tests.support.engine import Harness, ManualClock, MemoryStore
from tests.support.fakes import run_hook
from tests.support.waiting import wait_until

URLS = {"stable": "http://127.0.0.1:9001", "canary": "http://127.0.0.1:9002"}
FAST = {"interval": "1s", "max_error_rate": 0.01}
STABLE_ONLY = {"stable": 100, "canary": 0}


def config(**kw: Any) -> Config:
    kw.setdefault("weights", {"stable": 50, "canary": 50})
    return Config.model_validate(rollout_config(URLS, **kw))


def healthy(h: Harness, n: int = 30) -> None:
    h.traffic.serve("stable", n)
    h.traffic.serve("canary", n)


def failing(h: Harness, n: int = 30) -> None:
    h.traffic.serve("stable", n)
    h.traffic.serve("canary", n, errors=n)


async def ticks_until(h: Harness, serve: Callable[[], None], done: Callable[[], bool],
                      limit: int) -> int:
    """Seconds of `serve()` a second until `done()`; fails after `limit`."""
    for i in range(1, limit + 1):
        serve()
        await h.tick(1.0)
        if done():
            return i
    raise AssertionError(f"not done within {limit} s: {h.engine.describe('shop').guard}")


def guard_tests(h: Harness) -> list[GuardTest]:
    guard = h.engine.describe("shop").guard
    assert guard is not None, "no verdict yet"
    return guard.tests


def guard_outcome(h: Harness) -> str | None:
    guard = h.engine.describe("shop").guard
    return guard.outcome if guard is not None else None


def results(h: Harness) -> list[str]:
    return [c["result"] for c in h.state().checks]


# --------------------------------------------------------------------------- the guard


async def test_a_failing_canary_is_aborted_in_seconds_in_one_swap(harness: Harness) -> None:
    h = harness
    await h.start(config(analysis=FAST))
    for _ in range(3):
        healthy(h)
        await h.tick(1.0)
    assert h.state().phase == "idle" and "fail" not in results(h)
    swaps = len(h.installed)
    # 30 failing requests a second against a 1% limit: a few 3 s slices suffice.
    took = await ticks_until(h, lambda: failing(h), lambda: h.state().phase == "aborted", 15)
    assert took <= 12
    assert h.installed[swaps:] == [{"shop": STABLE_ONLY}]  # exactly one table, baseline 100
    assert h.store.states["shop"].phase == Phase.ABORTED  # persisted in the same tick
    assert h.engine.aborts == {"shop": 1}
    reason = h.state().abort_reason or ""
    assert reason.startswith("guard: canary error rate ") and "> 1%: e=" in reason


async def test_between_intervals_nothing_is_judged(harness: Harness) -> None:
    h = harness
    await h.start(config(analysis=FAST))
    await h.tick()
    failing(h)
    for _ in range(9):
        await h.tick(0.1)
    assert len(h.state().checks) == 1  # only the first, at t=0
    await h.tick(0.2)  # past t=1
    assert len(h.state().checks) == 2


async def test_one_error_in_fifty_requests_is_weak_evidence_not_an_abort(
    harness: Harness,
) -> None:
    h = harness
    await h.start(config(analysis=FAST))
    for i in range(10):
        h.traffic.serve("stable", 5)
        h.traffic.serve("canary", 5, errors=1 if i == 4 else 0)
        await h.tick(1.0)
    assert h.state().phase == "idle"
    assert set(results(h)) == {"inconclusive"}
    [test] = guard_tests(h)
    assert isinstance(test, RateTest)
    assert (test.events, test.trials, test.outcome) == (1, 50, "inconclusive")
    assert h.engine.checks_total == {("shop", "inconclusive"): 11}


async def test_a_canary_failing_every_request_at_low_traffic_is_still_aborted(
    harness: Harness,
) -> None:
    h = harness
    await h.start(config(analysis=FAST))
    took = await ticks_until(h, lambda: failing(h, 3), lambda: h.state().phase == "aborted",
                             60)
    assert took <= 40  # 3 req/s: a slice is 30 requests, 10 s


async def test_the_issue_s_six_routes_only_the_broken_canary_is_aborted(
    harness: Harness,
) -> None:
    """Issue 11's "cries wolf": six routes at 90/10, `max_error_rate: 0.01`, everything else
    default; five canaries at 0.5% errors (half the limit, 5 req/s each) and one at 8%. The
    window guard reverted two healthy ones 12 s in, with the broken one. Seeded errors."""
    h = harness
    names = [f"r{i}" for i in range(6)]
    routes = [route(URLS, {"stable": 90, "canary": 10}, name=n, match={"path_prefix": f"/{n}"})
              for n in names]
    for r in routes:
        r["analysis"] = {"max_error_rate": 0.01}
    await h.start(Config.model_validate(proxy_config(routes)))
    rate = {n: 0.08 if n == "r5" else 0.005 for n in names}
    rng = random.Random(20240611)
    aborted_after: dict[str, int] = {}
    for second in range(1, 301):  # five minutes
        for n in names:
            if n in aborted_after:
                continue
            errors = sum(rng.random() < rate[n] for _ in range(5))
            h.traffic.serve("canary", 5, errors=errors, route=n)
            h.traffic.serve("stable", 45, route=n)
        await h.tick(1.0)
        for n in names:
            if n not in aborted_after and h.state(n).phase == "aborted":
                aborted_after[n] = second
    assert list(aborted_after) == ["r5"], aborted_after
    assert aborted_after["r5"] <= 120, aborted_after  # measured: 24 s
    assert (h.state("r5").abort_reason or "").startswith("guard: canary error rate ")
    for n in names[:5]:
        assert h.weights(n) == {"stable": 90, "canary": 10}


@pytest.mark.parametrize(("include", "phase"), [(False, "idle"), (True, "aborted")])
async def test_synthetic_load_is_judged_only_when_the_route_says_so(
    harness: Harness, include: bool, phase: str
) -> None:
    h = harness
    await h.start(config(analysis={**FAST, "include_synthetic": include}))
    for _ in range(15):
        healthy(h)
        h.traffic.serve("canary", 30, errors=30, synthetic=True)
        await h.tick(1.0)
    assert h.state().phase == phase


async def test_compare_to_baseline_keeps_a_canary_in_a_shared_outage(harness: Harness) -> None:
    h = harness
    await h.start(config(analysis={**FAST, "max_error_rate": None,
                                   "compare_to_baseline": {"margin": 0.5}}))
    for _ in range(30):
        h.traffic.serve("stable", 30, errors=15)
        h.traffic.serve("canary", 30, errors=15)
        await h.tick(1.0)
    assert h.state().phase == "idle"
    [test] = guard_tests(h)
    assert isinstance(test, RatioTest)
    assert (test.against, test.canary_events, test.baseline_events) == ("stable", 450, 450)

    def canary_fails() -> None:
        h.traffic.serve("stable", 30)
        h.traffic.serve("canary", 30, errors=30)

    await ticks_until(h, canary_fails, lambda: h.state().phase == "aborted", 240)
    assert "vs baseline" in (h.state().abort_reason or "")


async def test_latency_limits_count_requests_over_the_limit(harness: Harness) -> None:
    h = harness
    await h.start(config(analysis={**FAST, "max_p99_ms": 200}))
    for _ in range(20):
        h.traffic.serve("stable", 30, seconds=0.12)
        h.traffic.serve("canary", 30, seconds=0.12)  # under 200 ms: never counted as slow
        await h.tick(1.0)
    assert h.state().phase == "idle"
    p99 = next(t for t in guard_tests(h) if t.metric == "p99")
    assert isinstance(p99, RateTest)
    assert (p99.events, p99.trials, p99.limit_ms, p99.outcome) == (0, 600, 200.0, "pass")

    def canary_slow() -> None:
        h.traffic.serve("stable", 30)
        h.traffic.serve("canary", 30, seconds=0.3)

    took = await ticks_until(h, canary_slow, lambda: h.state().phase == "aborted", 30)
    assert took <= 15
    assert "canary p99 (over 200 ms)" in (h.state().abort_reason or "")


async def test_every_version_but_the_baseline_is_judged(harness: Harness) -> None:
    h = harness
    urls = {**URLS, "other": "http://127.0.0.1:9003"}
    await h.start(Config.model_validate(rollout_config(
        urls, weights={"stable": 80, "canary": 10, "other": 10}, analysis=FAST)))
    for _ in range(5):
        for v in urls:
            h.traffic.serve(v, 30)
        await h.tick(1.0)
    assert [t.version for t in guard_tests(h)] == ["canary", "other"]

    def serve() -> None:
        h.traffic.serve("stable", 30)
        h.traffic.serve("canary", 30)
        h.traffic.serve("other", 30, errors=30)  # not the first non-baseline version

    await ticks_until(h, serve, lambda: h.state().phase == "aborted", 15)
    assert (h.state().abort_reason or "").startswith("guard: other error rate")
    assert h.weights() == {"stable": 100, "canary": 0, "other": 0}


# --------------------------------------------------------------------------- steps and clock


async def test_timed_pause_runs_on_the_injected_wall_clock(harness: Harness) -> None:
    h = harness
    steps = [{"set_weight": 20}, {"pause": "30s"}, {"set_weight": 60}, {"pause": {}}]
    await h.start(config(weights=STABLE_ONLY, rollout={"steps": steps}))  # the first tick
    await h.tick()
    assert h.weights() == {"stable": 80, "canary": 20}
    await h.tick(29.9)
    assert h.weights()["canary"] == 20
    await h.tick(0.1)
    assert h.weights()["canary"] == 60
    assert (h.state().phase, h.state().pause_reason) == ("paused", PauseReason.AWAIT_PROMOTE)
    await h.clock.jump(86400)
    await h.tick()
    assert h.weights()["canary"] == 60


@pytest.mark.parametrize("hold", ["waiting for promote", "manual"])
async def test_analysis_still_aborts_a_paused_rollout(harness: Harness, hold: str) -> None:
    h = harness
    wait: dict[str, Any] = {"pause": {}} if hold != "manual" else {"pause": "1h"}
    steps = [{"set_weight": 50}, wait]
    await h.start(config(weights=STABLE_ONLY, analysis=FAST, rollout={"steps": steps}))
    await h.tick()
    if hold == "manual":
        await h.act("pause")
    assert (h.state().phase, h.state().pause_reason) == ("paused", hold)
    await ticks_until(h, lambda: failing(h), lambda: h.state().phase == "aborted", 15)
    assert h.installed[-1]["shop"] == STABLE_ONLY


async def test_a_promoted_rollout_is_final_a_canary_failing_after_it_is_not_reverted(
    harness: Harness,
) -> None:
    h = harness
    steps = [{"set_weight": 50}, {"pause": {}}]
    await h.start(config(weights=STABLE_ONLY, analysis=FAST, rollout={"steps": steps}))
    await h.tick()
    for _ in range(3):
        healthy(h)
        await h.tick(1.0)
    await h.act("promote", full=True)
    assert (h.state().phase, h.weights()) == ("promoted", {"stable": 0, "canary": 100})
    checks = len(h.state().checks)
    swaps = len(h.installed)
    # What aborted a canary within 12 s above: a minute of it, after the promotion. The
    # baseline may be gone, so nothing sends traffic back to it.
    for _ in range(60):
        h.traffic.serve("canary", 30, errors=30)
        await h.tick(1.0)
    assert (h.state().phase, h.weights()) == ("promoted", {"stable": 0, "canary": 100})
    assert h.installed[swaps:] == [] and h.engine.aborts == {}
    assert len(h.state().checks) == checks  # the guard stopped measuring at the promotion
    assert h.store.states["shop"].phase == Phase.PROMOTED


# ------------------------------------------------------------------------- steps wait for evidence


EVIDENCE_STEPS = [{"set_weight": 10}, {"pause": "10s"}, {"set_weight": 50}, {"pause": {}}]


async def test_a_rollout_with_no_traffic_does_not_pass_its_first_timed_pause(
    harness: Harness,
) -> None:
    h = harness
    await h.start(config(weights=STABLE_ONLY, rollout={"steps": EVIDENCE_STEPS},
                         analysis=FAST))
    await h.tick()
    assert h.weights()["canary"] == 10
    for _ in range(120):  # two minutes, ten times the pause, without one request
        await h.tick(1.0)
    assert h.weights()["canary"] == 10
    described = h.engine.describe("shop")
    assert (described.phase, described.pause_reason) == ("paused", "waiting for evidence")
    assert described.guard is not None and described.guard.outcome == "inconclusive"
    assert "no requests yet" in described.guard.tests[0].summary
    # Traffic at last: a clean canary passes at a check, and the rollout goes on there.
    took = await ticks_until(h, lambda: healthy(h, 100), lambda: h.state().step == 3, 15)
    assert 3 <= took <= 8  # about 400 clean requests show "under 1%"
    assert (h.weights()["canary"], h.state().pause_reason) == (50, "waiting for promote")


async def test_a_healthy_canary_completes_its_timed_pause_on_evidence_at_the_timer(
    harness: Harness,
) -> None:
    h = harness
    await h.start(config(weights=STABLE_ONLY, rollout={"steps": EVIDENCE_STEPS},
                         analysis=FAST))
    await h.tick()
    for _ in range(9):
        healthy(h, 100)
        await h.tick(1.0)
    assert (h.state().step, guard_outcome(h)) == (1, "pass")
    healthy(h, 100)
    await h.tick(1.0)  # the time is up and the pass holds: no wait at all
    assert (h.state().step, h.weights()["canary"]) == (3, 50)


async def test_on_timer_steps_advance_blind_but_the_guard_still_aborts(
    harness: Harness,
) -> None:
    h = harness
    await h.start(config(weights=STABLE_ONLY, rollout={"steps": EVIDENCE_STEPS},
                         analysis={**FAST, "advance": "on-timer"}))
    await h.tick()
    await h.tick(10.0)
    assert (h.state().step, h.weights()["canary"]) == (3, 50)
    await ticks_until(h, lambda: failing(h), lambda: h.state().phase == "aborted", 15)


# --------------------------------------------------------------------------- restarts


async def test_an_aborted_state_is_restored_before_the_first_table() -> None:
    cfg = config(analysis=FAST)
    route = cfg.routes[0]
    aborted = rollout.abort(rollout.start(route, 0.0, "r1"), "guard: canary error rate", 1.0,
                            Actor.GUARD)
    h = Harness(MemoryStore({"shop": aborted}))
    await h.start(cfg)
    try:
        assert h.weights() == STABLE_ONLY  # what Controller.prepare() installs first
        assert h.state().abort_reason == "guard: canary error rate"
    finally:
        await h.engine.stop()


async def test_a_stored_state_of_another_revision_starts_fresh() -> None:
    old = config(analysis=FAST, weights={"stable": 90, "canary": 10},
                 rollout={"revision": "v1"})
    aborted = rollout.abort(rollout.start(old.routes[0], 0.0, "r1"), "old news", 1.0,
                            Actor.OPERATOR)
    h = Harness(MemoryStore({"shop": aborted}))
    await h.start(config(analysis=FAST, rollout={"revision": "v2"}))
    try:
        assert (h.state().phase, h.state().abort_reason) == ("idle", None)
        assert h.state().run != "r1"
        assert h.weights() == {"stable": 50, "canary": 50}
    finally:
        await h.engine.stop()


# --------------------------------------------------------------------------- webhooks


def hooked(gate: str, notify: str, steps: list[Any], **kw: Any) -> Config:
    webhooks = [{"on": "pre-step", "url": gate, "timeout": "2s"},
                {"on": "abort", "url": notify, "timeout": "2s"}]
    kw.setdefault("weights", STABLE_ONLY)
    return config(rollout={"steps": steps, "webhooks": webhooks}, **kw)


async def test_a_pre_step_webhook_answering_503_holds_the_step_until_it_answers_200(
    harness: Harness,
) -> None:
    h = harness
    async with run_hook() as hook:
        hook.answer = 503
        await h.start(hooked(hook.url("/gate"), hook.url("/notify"),
                             [{"set_weight": 20}, {"pause": {}}]))
        await h.tick_until(lambda: h.engine.describe("shop").gate is not None,
                           "the gate's answer")
        assert "answered 503" in (h.engine.describe("shop").gate or "")
        assert (h.weights(), h.state().step) == (STABLE_ONLY, 0)
        [asked] = hook.on("/gate")
        assert (asked["event"], asked["route"], asked["step"]) == ("pre-step", "shop", 0)

        await h.tick(1.0)  # held: not asked again before the retry delay
        gate = h.state().gate
        assert gate is not None and not gate.asking and gate.retry_at > h.wall
        assert len(hook.on("/gate")) == 1 and h.weights() == STABLE_ONLY

        hook.answer = 200
        await h.tick(1.5)
        await h.tick_until(lambda: h.weights()["canary"] == 20, "the step after a 200")
        assert len(hook.on("/gate")) == 2
        assert h.engine.describe("shop").gate is None


async def test_a_pre_step_webhook_also_holds_a_step_that_follows_a_timed_pause(
    harness: Harness,
) -> None:
    h = harness
    async with run_hook() as hook:
        await h.start(hooked(hook.url("/gate"), hook.url("/notify"),
                             [{"set_weight": 20}, {"pause": "10s"}, {"set_weight": 50},
                              {"pause": {}}]))
        await h.tick_until(lambda: h.weights()["canary"] == 20, "the first step")
        hook.answer = 503
        await h.tick(10.0)  # the pause is over; set_weight 50 must ask the gate first
        await h.tick(TICK)  # (the timer tick after the pause's end asks it)
        await h.tick_until(lambda: h.engine.describe("shop").gate is not None,
                           "the gate's answer to set_weight 50")
        assert "answered 503" in (h.engine.describe("shop").gate or "")
        assert len(hook.on("/gate")) == 2
        assert h.weights()["canary"] == 20, (
            f"set_weight 50 ran without the gate's 2xx; gate asked {len(hook.on('/gate'))}x")
        # The gate's next answer is a 200: that, and only that, lets set_weight 50 run.
        hook.answer = 200
        await h.tick(GATE_RETRY)
        await h.tick_until(lambda: h.weights()["canary"] == 50, "the step after a 200")
        assert h.engine.describe("shop").gate is None


async def test_an_abort_webhook_gets_route_event_and_reason_as_json(harness: Harness) -> None:
    h = harness
    async with run_hook() as hook:
        await h.start(hooked(hook.url("/gate"), hook.url("/notify"), [{"pause": {}}],
                             weights={"stable": 50, "canary": 50}, analysis=FAST))
        await ticks_until(h, lambda: failing(h), lambda: h.state().phase == "aborted", 15)
        await wait_until(lambda: bool(hook.on("/notify")), what="the abort webhook")
        [sent] = hook.on("/notify")
        assert (sent["event"], sent["route"], sent["phase"]) == ("abort", "shop", "aborted")
        assert sent["reason"].startswith("guard: canary error rate 100% [")
        assert "errors)" in sent["reason"]
        assert sent["weights"] == STABLE_ONLY
        assert sent["last_check"]["result"] == "fail"
        await h.webhooks_answered()  # before the hook stops


async def test_a_manual_abort_notifies_with_the_operator_s_reason(harness: Harness) -> None:
    h = harness
    async with run_hook() as hook:
        await h.start(hooked(hook.url("/gate"), hook.url("/notify"), [{"pause": {}}]))
        await h.act("abort", reason="bad build 1234")
        await wait_until(lambda: bool(hook.on("/notify")), what="the abort webhook")
        [sent] = hook.on("/notify")
        assert (sent["event"], sent["route"], sent["reason"]) == (
            "abort", "shop", "manual: bad build 1234")
        await h.webhooks_answered()


async def test_post_step_webhooks_are_sent_for_every_step(harness: Harness) -> None:
    h = harness
    async with run_hook() as hook:
        steps = [{"set_weight": 20}, {"pause": "10s"}, {"set_weight": 50}, {"pause": {}}]
        webhooks = [{"on": "post-step", "url": hook.url("/post"), "timeout": "2s"}]
        await h.start(config(weights=STABLE_ONLY,
                             rollout={"steps": steps, "webhooks": webhooks}))
        await wait_until(lambda: len(hook.on("/post")) == 1, what="step 1's post-step")
        await h.tick(10.0)
        await wait_until(lambda: len(hook.on("/post")) == 3, what="steps 2 and 3")
        sent = sorted(hook.on("/post"), key=lambda p: p["step"])
        assert [(p["event"], p["step"], p["weights"]["canary"]) for p in sent] == [
            ("post-step", 1, 20), ("post-step", 2, 50), ("post-step", 3, 50)]
        assert {p["run"] for p in sent} == {h.state().run}
        await h.webhooks_answered()


# --------------------------------------------------------------------------- state writes


async def test_a_failed_write_stays_pending_and_is_retried_with_backoff_until_it_lands(
    harness: Harness,
) -> None:
    h = harness
    await h.start(config(weights=STABLE_ONLY, rollout={"steps": [{"set_weight": 20},
                                                                 {"pause": {}}]}))
    await wait_until(lambda: not h.engine.pending_writes(), what="the first step written")
    h.store.fail = True
    state = await h.act("abort", reason="bad")
    assert state.phase == "aborted"
    assert h.weights() == STABLE_ONLY  # in effect at once, written or not
    pending = h.engine.pending_writes()["shop"]
    assert (pending.phase, pending.attempts) == ("aborted", 1)
    assert "told to fail" in (pending.error or "")
    assert h.engine.describe("shop").write_pending == pending

    await h.tick(0.25)  # the first retry, after 0.25 s
    assert h.engine.pending_writes()["shop"].attempts == 2
    await h.tick(0.25)  # the next one waits 0.5 s
    assert h.engine.pending_writes()["shop"].attempts == 2
    await h.tick(0.25)
    assert h.engine.pending_writes()["shop"].attempts == 3

    h.store.fail = False
    await h.tick(5.0)  # the backoff never grows past 5 s
    assert h.engine.pending_writes() == {}
    assert (h.store.states["shop"].phase, h.store.states["shop"].seq) == ("aborted", state.seq)


# --------------------------------------------------------------------------- deployment windows


def friday(hhmm: str) -> float:
    h, m = map(int, hhmm.split(":"))
    return datetime(2024, 6, 7, h, m, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()


NIGHT = {"days": ["fri"], "start": "22:00", "end": "02:00", "tz": "Europe/Berlin"}
NIGHT_STEPS = [{"set_weight": 10}, {"pause": "1h"}, {"set_weight": 50}, {"pause": "3h"},
               {"set_weight": 100}]


async def test_a_window_across_midnight_lets_steps_advance_until_its_inclusive_end() -> None:
    h = Harness(clock=ManualClock(wall=friday("23:00")))
    try:
        await h.start(config(weights=STABLE_ONLY,
                             rollout={"steps": NIGHT_STEPS, "window": NIGHT}))
        assert h.weights()["canary"] == 10  # Friday 23:00: open
        await h.clock.jump(3600)  # Saturday 00:00: still Friday's window
        await h.tick()
        assert h.weights()["canary"] == 50
        await h.clock.jump(2 * 3600 + 59)  # Saturday 02:00:59: the end minute is included
        await h.tick()
        assert (h.state().phase, h.weights()["canary"]) == ("progressing", 50)
        await h.clock.jump(3600)  # 03:00:59: the pause is over, the window closed at 02:01
        await h.tick()
        assert (h.state().phase, h.state().pause_reason) == ("paused",
                                                             "outside deployment window")
        assert h.weights()["canary"] == 50
    finally:
        await h.engine.stop()


async def test_a_rollout_waiting_for_its_window_can_be_paused_and_resumed() -> None:
    h = Harness(clock=ManualClock(wall=friday("12:00")))
    try:
        await h.start(config(weights=STABLE_ONLY,
                             rollout={"steps": NIGHT_STEPS, "window": NIGHT}))
        assert h.state().pause_reason == "outside deployment window"
        state = await h.act("pause")
        assert (state.phase, state.pause_reason) == ("paused", "manual")
        await h.clock.jump(10 * 3600)  # 22:00: the window opens, the operator's pause holds
        await h.tick()
        assert (h.state().pause_reason, h.weights()["canary"]) == ("manual", 0)
        await h.act("resume")
        await h.tick(0.1)  # the next timer tick
        assert h.weights()["canary"] == 10
    finally:
        await h.engine.stop()
