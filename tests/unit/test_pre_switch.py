"""The validated blue/green switch (`pre_switch`) as pure folds: the old color serves while
the new one is checked; no healthy endpoint holds the switch; the duration passed switches."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from splitproxy.config.models import Route
from splitproxy.config.steps import PreSwitch
from splitproxy.rollout import Phase, RouteState
from splitproxy.rollout.events import Act, Action, Reconfigure, Restore, Tick
from splitproxy.rollout.fold import apply
from splitproxy.rollout.machine import serving, validating, weights

T0 = 1_700_000_000.0


def route(active: str, **kw: Any) -> Route:
    return Route.model_validate({
        "name": "checkout", "strategy": "blue-green", "active": active,
        "versions": {"blue": {"endpoints": ["http://127.0.0.1:9011"]},
                     "green": {"endpoints": ["http://127.0.0.1:9012"]}},
        "pre_switch": {"duration": "30s"}, **kw})


def switching() -> tuple[RouteState, Route]:
    blue, green = route("blue"), route("green")
    state, _ = apply(None, Restore(None, None), blue, T0, "r1")
    state, _ = apply(state, Reconfigure(), green, T0 + 1, "r2")
    return state, green


def test_a_change_of_active_validates_while_the_old_color_serves() -> None:
    state, green = switching()
    assert validating(state) and state.previous_active == "blue"
    assert weights(state, green) == {"blue": 100, "green": 0}
    assert serving(state) == "blue"
    state, _ = apply(state, Tick(leader=True), green, T0 + 20, "")
    assert validating(state)  # not before `duration`


def test_the_duration_passed_switches() -> None:
    state, green = switching()
    state, effects = apply(state, Tick(leader=True), green, T0 + 31, "")
    assert state.phase == Phase.IDLE and weights(state, green) == {"blue": 0, "green": 100}
    assert any("pre-switch checks passed" in getattr(e, "message", "") for e in effects)


def test_no_healthy_endpoint_holds_the_switch_and_retry_validates_again() -> None:
    state, green = switching()
    down = frozenset({("checkout", "green")})
    state, _ = apply(state, Tick(leader=True, down=down), green, T0 + 2, "")
    assert state.phase == Phase.ABORTED
    assert (state.abort_reason or "").startswith("pre-switch: green has no healthy endpoint")
    assert weights(state, green) == {"blue": 100, "green": 0}
    state, _ = apply(state, Act(Action.RETRY), green, T0 + 3, "r3")
    assert validating(state) and state.previous_active == "blue"


def test_only_the_leader_checks_and_another_color_down_does_not_matter() -> None:
    state, green = switching()
    held, _ = apply(state, Tick(leader=False, down=frozenset({("checkout", "green")})),
                    green, T0 + 40, "")
    assert held == state
    state, _ = apply(state, Tick(leader=True, down=frozenset({("checkout", "blue")})),
                     green, T0 + 31, "")
    assert state.phase == Phase.IDLE


def test_without_pre_switch_a_switch_is_immediate() -> None:
    blue, green = route("blue", pre_switch=None), route("green", pre_switch=None)
    state, _ = apply(None, Restore(None, None), blue, T0, "r1")
    state, _ = apply(state, Reconfigure(), green, T0 + 1, "r2")
    assert state.phase == Phase.IDLE and weights(state, green)["green"] == 100


def test_pre_switch_is_refused_where_it_cannot_apply() -> None:
    canary = {"name": "shop", "weights": {"a": 1, "b": 0}, "pre_switch": {},
              "versions": {"a": {"endpoints": ["http://127.0.0.1:1"]},
                           "b": {"endpoints": ["http://127.0.0.1:2"]}}}
    with pytest.raises(ValidationError, match="only for strategy blue-green"):
        Route.model_validate(canary)
    with pytest.raises(ValidationError, match="judges with the route's `analysis`"):
        route("green", pre_switch={"analysis": True})
    assert route("green", pre_switch={"duration": "1m"}).pre_switch == PreSwitch(duration=60)
