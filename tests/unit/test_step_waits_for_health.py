"""A weight step that would send traffic to a canary without a healthy endpoint waits,
paused with the reason, and goes on by itself once an endpoint is healthy again."""

from __future__ import annotations

from typing import Any

from splitproxy.config.models import Route
from splitproxy.rollout import PauseReason, Phase, advance, start, weights
from splitproxy.rollout.events import Restore, Tick
from splitproxy.rollout.fold import apply

RUN = "r1"
T0 = 1_000_000.0


def route(steps: list[Any]) -> Route:
    return Route.model_validate({
        "name": "shop",
        "versions": {"stable": {"endpoints": ["http://127.0.0.1:9001"]},
                     "canary": {"endpoints": ["http://127.0.0.1:9002"]}},
        "weights": {"stable": 100, "canary": 0},
        "rollout": {"steps": steps},
    })


def test_weight_step_waits_while_the_canary_is_down_then_goes_on() -> None:
    r = route([{"set_weight": 20}, {"pause": {}}])
    state, events = advance(start(r, T0, RUN), r, T0, canary_down=True)
    assert (state.phase, state.step, state.pause_reason) == (
        Phase.PAUSED, 0, PauseReason.NO_HEALTHY)
    assert weights(state, r) == {"stable": 100, "canary": 0}
    assert events == ["step 1: set_weight 20 waits: canary has no healthy endpoint"]
    # Still down: it keeps waiting, nothing happens.
    assert advance(state, r, T0 + 60, canary_down=True) == (state, [])
    state, events = advance(state, r, T0 + 61)
    assert weights(state, r) == {"stable": 80, "canary": 20}
    assert events == ["step 1: canary has a healthy endpoint again", "step 1: set_weight 20",
                      "step 2: paused until promoted"]


def test_a_step_to_weight_zero_does_not_wait() -> None:
    r = route([{"set_weight": 0}, {"pause": {}}])
    state, _ = advance(start(r, T0, RUN), r, T0, canary_down=True)
    assert (state.phase, state.step, state.pause_reason) == (
        Phase.PAUSED, 1, PauseReason.AWAIT_PROMOTE)


def test_the_timer_tick_carries_which_versions_are_down() -> None:
    r = route([{"set_weight": 20}, {"pause": {}}])
    state, _ = apply(None, Restore(), r, T0, RUN)
    state, _ = apply(state, Tick(leader=True, down=frozenset({("shop", "canary")})), r, T0, RUN)
    assert state.pause_reason == PauseReason.NO_HEALTHY
    # The baseline being down does not hold the canary's step.
    state, _ = apply(state, Tick(leader=True, down=frozenset({("shop", "stable")})), r, T0, RUN)
    assert weights(state, r) == {"stable": 80, "canary": 20}

