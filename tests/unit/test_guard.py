"""The guard's plan, evidence and verdicts, one pure call each: what is judged, which share of
alpha each test gets, when the tests restart, and what passes a step. No clock, no sockets."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from splitproxy.config.models import Route
from splitproxy.rollout import Actor, Phase, RouteState, machine
from splitproxy.rollout.budget import step_alpha
from splitproxy.rollout.events import Measurement
from splitproxy.rollout.guard import MAX_SEGMENT, assess, passed, plan, report
from splitproxy.rollout.tally import Tally
from splitproxy.rollout.verdicts import Outcome

T0 = 1_717_380_000.0


def make(versions: tuple[str, ...] = ("stable", "canary"), **kw: Any) -> Route:
    data: dict[str, Any] = {
        "name": "shop",
        "versions": {v: {"endpoints": [f"http://127.0.0.1:{9001 + i}"]}
                     for i, v in enumerate(versions)},
        "weights": {v: 10 for v in versions},
        "analysis": {"max_error_rate": 0.01},
    }
    data.update(kw)
    return Route.model_validate(data)


def state_of(route: Route, **kw: Any) -> RouteState:
    return replace(machine.start(route, T0, "r1"), **kw)


def keys(route: Route, state: RouteState | None = None) -> list[str]:
    return [t.key for t in plan(state or state_of(route), route).tests]


def test_every_version_but_the_baseline_with_traffic_is_judged() -> None:
    route = make(("stable", "a", "b", "c"), weights={"stable": 70, "a": 20, "b": 10, "c": 0})
    assert keys(route) == ["a:error_rate", "b:error_rate"]


def test_each_limit_is_a_test_and_a_comparison_adds_one_per_metric() -> None:
    route = make(analysis={"max_error_rate": 0.01, "max_p99_ms": 200, "max_p50_ms": 80,
                           "compare_to_baseline": {"margin": 0.2}})
    tests = plan(state_of(route), route).tests
    assert [t.key for t in tests] == [
        "canary:error_rate", "canary:p50", "canary:p99", "canary:error_rate~stable",
        "canary:p50~stable", "canary:p99~stable"]
    assert [(t.threshold, t.limit) for t in tests[:3]] == [(0.01, None), (0.5, 0.08),
                                                           (0.01, 0.2)]
    assert {t.threshold for t in tests[3:]} == {0.2}


def test_blue_green_judges_the_color_switched_to_and_after_an_abort_still_shows_it() -> None:
    route = make(("blue", "green"), strategy="blue-green", weights=None, active="green",
                 analysis={"max_error_rate": 0.01, "compare_to_baseline": {}})
    state = state_of(route, previous_active="blue")
    assert keys(route, state) == ["green:error_rate"]  # the old color serves nothing now
    aborted = machine.abort(state, "x", T0, Actor.GUARD)
    assert keys(route, aborted) == ["green:error_rate"]


def measure(state: RouteState, canary: Tally, stable: Tally | None = None) -> Measurement:
    return Measurement(state.run, state.step,
                       {"canary": canary, "stable": stable or Tally(100, 0, 100)})


def feed(state: RouteState, route: Route, ticks: int, canary: Tally,
         start: float = T0) -> RouteState:
    for i in range(1, ticks + 1):
        a = assess(state, measure(state, canary), route, start + i)
        state = replace(state, evidence=a.evidence)
    return state


STEPS = [{"set_weight": 10}, {"pause": "1m"}, {"set_weight": 50}, {"pause": "1m"},
         {"set_weight": 100}]


def test_each_test_gets_its_share_of_alpha_steps_by_tests() -> None:
    route = make(weights={"stable": 100, "canary": 0}, rollout={"steps": STEPS},
                 analysis={"max_error_rate": 0.01, "max_p99_ms": 200, "alpha": 0.01})
    state = state_of(route, step=1, weight=10, phase=Phase.PROGRESSING)
    state = feed(state, route, 1, Tally(100, 0, 100))
    shown = report(state, route)
    assert shown is not None
    # Two pauses planned (a third share held back for restarts), two tests per segment.
    assert shown["alpha_per_test"] == pytest.approx(0.01 / 3 / 2)
    assert shown["fail_at"] == pytest.approx(600)


def test_a_step_restarts_the_tests_and_takes_the_next_share_only_if_it_could_fail() -> None:
    route = make(weights={"stable": 100, "canary": 0}, rollout={"steps": STEPS})
    state = state_of(route, step=1, weight=10, phase=Phase.PROGRESSING)
    short = feed(state, route, 2, Tally(10, 0, 10))  # 20 requests: no slice closed yet
    moved = replace(short, step=3, weight=50)
    after = feed(moved, route, 1, Tally(10, 0, 10), start=T0 + 2)
    assert (after.evidence["step"], after.evidence["segment"]) == (3, 0)
    spent = feed(state, route, 5, Tally(10, 0, 10))  # 50 requests over 5 s: a slice closed
    after = feed(replace(spent, step=3, weight=50), route, 1, Tally(10, 0, 10), start=T0 + 5)
    assert (after.evidence["step"], after.evidence["segment"]) == (3, 1)
    assert after.evidence["tests"]["canary:error_rate"]["trials"] == 10  # counted afresh


def test_a_changed_threshold_restarts_the_tests_from_the_reserve() -> None:
    route = make()
    state = feed(state_of(route), route, 5, Tally(10, 0, 10))
    stricter = make(analysis={"max_error_rate": 0.005})
    again = feed(state, stricter, 1, Tally(10, 0, 10), start=T0 + 5)
    assert again.evidence["segment"] == 1  # planned: 1 (no steps); 1 is the reserve's first
    shown = report(again, stricter)
    assert shown is not None
    assert shown["alpha_per_test"] == pytest.approx(step_alpha(0.01, 1, 1))


def test_a_long_segment_restarts_so_hours_of_good_evidence_cannot_hide_a_regression() -> None:
    route = make()
    state = feed(state_of(route), route, 5, Tally(10, 0, 10))
    later = feed(state, route, 1, Tally(10, 0, 10), start=T0 + MAX_SEGMENT)
    assert (later.evidence["segment"], later.evidence["since"]) == (1, T0 + MAX_SEGMENT + 1)


def test_evidence_that_cannot_be_read_restarts_the_tests_as_spent() -> None:
    route = make()
    state = feed(state_of(route), route, 1, Tally(10, 0, 10))
    broken = replace(state, evidence={**state.evidence, "tests": {"canary:error_rate": "?"}})
    again = feed(broken, route, 1, Tally(10, 0, 10), start=T0 + 1)
    assert again.evidence["segment"] == 1


def test_without_traffic_nothing_passes_and_with_nothing_to_judge_nothing_waits() -> None:
    route = make(weights={"stable": 100, "canary": 0}, rollout={"steps": STEPS})
    at_pause = state_of(route, step=1, weight=10, phase=Phase.PROGRESSING)
    quiet = feed(at_pause, route, 100, Tally())
    assert (quiet.evidence["outcome"], passed(quiet, route)) == ("inconclusive", False)
    before = state_of(route)  # step 0: the canary has no weight yet, nothing to judge
    assert plan(before, route).tests == () and passed(before, route)


def test_a_pass_counts_for_its_own_step_only_and_on_timer_never_waits() -> None:
    route = make(weights={"stable": 100, "canary": 0}, rollout={"steps": STEPS})
    state = feed(state_of(route, step=1, weight=10, phase=Phase.PROGRESSING), route, 8,
                 Tally(100, 0, 100))
    assert passed(state, route)
    assert not passed(replace(state, step=3, weight=50), route)
    blind = make(weights={"stable": 100, "canary": 0}, rollout={"steps": STEPS},
                 analysis={"max_error_rate": 0.01, "advance": "on-timer"})
    assert passed(state_of(blind, step=1, weight=10), blind)


def test_a_comparison_passes_a_metric_only_where_it_is_its_only_test() -> None:
    both = make(analysis={"max_error_rate": 0.01, "compare_to_baseline": {}})
    state = feed(state_of(both), both, 10, Tally(100, 0, 100))
    # No events in either version: the comparison cannot pass, the absolute limit does.
    shown = report(state, both)
    assert shown is not None
    outcomes = {t["against"]: t["outcome"] for t in shown["tests"]}
    assert outcomes == {None: "pass", "stable": "inconclusive"}
    assert shown["outcome"] == "pass"
    alone = make(analysis={"max_error_rate": None, "compare_to_baseline": {}})
    state = feed(state_of(alone), alone, 10, Tally(100, 0, 100))
    assert state.evidence["outcome"] == "inconclusive"


def test_a_failing_test_decides_and_says_which_version_and_metric() -> None:
    route = make(("stable", "a", "b"), analysis={"max_error_rate": 0.01, "max_p99_ms": 200})
    state = state_of(route)
    for i in range(1, 15):
        m = Measurement(state.run, state.step, {
            "stable": Tally(100, 0, 100), "a": Tally(100, 0, 100),
            "b": Tally(100, 0, 100, {0.2: 60})})
        a = assess(state, m, route, T0 + i)
        state = replace(state, evidence=a.evidence)
        if a.outcome is Outcome.FAIL:
            break
    assert a.outcome is Outcome.FAIL and a.decided_by is not None
    assert (a.decided_by.version, a.decided_by.metric) == ("b", "p99")
    assert a.summary.startswith("b p99 (over 200 ms) 60% [")
    assert "> 1%: e=" in a.summary and "(n=" in a.summary and " over)" in a.summary


def test_the_verdicts_that_ended_a_rollout_stay_shown_after_it() -> None:
    route = make(weights={"stable": 100, "canary": 0}, rollout={"steps": STEPS})
    state = feed(state_of(route, step=3, weight=50, phase=Phase.PROGRESSING), route, 8,
                 Tally(100, 0, 100))
    done = replace(state, phase=Phase.PROMOTED, step=len(STEPS))
    shown = report(done, route)
    assert shown is not None
    assert (shown["outcome"], shown["step"], shown["current"]) == ("pass", 3, False)
