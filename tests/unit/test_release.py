"""The end of a release (`rollout.release`): a new rollout that sends a promoted canary's traffic
back to the old stable's endpoints is flagged; ending the release properly is not. Pure calls."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from splitproxy.config.models import Route
from splitproxy.rollout import Phase, RouteState, advance, promote, start
from splitproxy.rollout.events import Log, Reconfigure, Restore
from splitproxy.rollout.fold import apply
from splitproxy.rollout.release import receivers, regressions

V1, V2, V3 = "http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"
STEPS: list[dict[str, Any]] = [{"set_weight": 10}, {"pause": {}}, {"set_weight": 100}]


def make(versions: dict[str, str | list[str]], weights: dict[str, int], **fields: Any) -> Route:
    return Route.model_validate({
        "name": "shop",
        "versions": {v: {"endpoints": [url] if isinstance(url, str) else url}
                     for v, url in versions.items()},
        "weights": weights, **fields})


V2_CANARY = make({"stable": V1, "canary": V2}, {"stable": 100, "canary": 0},
                 rollout={"revision": "v2", "steps": STEPS})


def promoted_v2() -> RouteState:
    state = start(V2_CANARY, 0.0, "r1")
    state, _ = advance(state, V2_CANARY, 1.0)
    state = promote(state, V2_CANARY, 2.0, full=True)
    assert state.phase == Phase.PROMOTED
    return state


def test_a_promoted_rollout_records_the_version_it_ended_on() -> None:
    assert promoted_v2().active == "canary"
    state, _ = advance(start(V2_CANARY, 0.0, "r1"), V2_CANARY, 1.0)
    state = promote(state, V2_CANARY, 2.0, full=False)  # past `pause: {}`, then 100%
    state, _ = advance(state, V2_CANARY, 3.0)
    assert (state.phase, state.active) == (Phase.PROMOTED, "canary")


ENDINGS = {
    # The walkthrough: v2 becomes the stable (its endpoints), then v3 is the next canary.
    "v2 made stable": (make({"stable": V2}, {"stable": 100}), []),
    "v2 made stable, canary kept at 0": (
        make({"stable": V2, "canary": V2}, {"stable": 100, "canary": 0}), []),
    "v3 canary after v2 made stable": (
        make({"stable": V2, "canary": V3}, {"stable": 100, "canary": 0},
             rollout={"revision": "v3", "steps": STEPS}), []),
    "canary keeps everything, rollout block gone": (
        make({"stable": V1, "canary": V2}, {"stable": 0, "canary": 100}), []),
    # The mistakes: traffic back to v1, unchanged since the promotion.
    "rollout block deleted": (
        make({"stable": V1, "canary": V2}, {"stable": 90, "canary": 10}), [("stable", (V1,))]),
    "v3 canary while stable is still v1": (
        make({"stable": V1, "canary": V3}, {"stable": 100, "canary": 0},
             rollout={"revision": "v3", "steps": STEPS}), [("stable", (V1,))]),
    "v1 renamed, same endpoints": (
        make({"old": V1, "canary": V2}, {"old": 50, "canary": 50}), [("old", (V1,))]),
    "stable half replaced": (
        make({"stable": [V1, V2], "canary": V2}, {"stable": 100, "canary": 0}),
        [("stable", (V1,))]),
}


@pytest.mark.parametrize("name", list(ENDINGS))
def test_what_a_new_rollout_sends_back_to_the_old_stable(name: str) -> None:
    route, expected = ENDINGS[name]
    found = [(r.version, r.endpoints) for r in regressions(promoted_v2(), route)]
    assert found == expected


def test_only_a_promoted_rollout_that_knows_its_canary_is_judged() -> None:
    deleted = ENDINGS["rollout block deleted"][0]
    running = start(V2_CANARY, 0.0, "r1")
    assert regressions(running, deleted) == []
    assert regressions(None, deleted) == []
    assert regressions(replace(promoted_v2(), active=None), deleted) == []


def test_receivers_are_the_versions_a_rollout_gives_traffic_before_it_ends() -> None:
    assert receivers(V2_CANARY) == ["stable", "canary"]
    all_in = make({"stable": V1, "canary": V2}, {"stable": 100, "canary": 0},
                  rollout={"steps": [{"pause": {}}, {"set_weight": 100}]})
    assert receivers(all_in) == ["stable", "canary"]  # stable until the first step
    blue_green = Route.model_validate({
        "name": "shop", "strategy": "blue-green", "active": "green",
        "versions": {"blue": {"endpoints": [V1]}, "green": {"endpoints": [V2]}}})
    assert receivers(blue_green) == ["green"]


def test_the_message_names_the_version_its_endpoints_and_the_way_out() -> None:
    [r] = regressions(promoted_v2(), ENDINGS["rollout block deleted"][0])
    text = r.message()
    assert "promoted to 'canary'" in text
    assert f"stable -> {V1}" in text
    assert "Unless this is a rollback" in text


def _warnings(effects: list[Any]) -> list[str]:
    return [e.message for e in effects if isinstance(e, Log) and e.level == "warning"]


def test_a_reload_and_a_restart_log_the_regression_as_a_warning() -> None:
    deleted = ENDINGS["rollout block deleted"][0]
    _, effects = apply(promoted_v2(), Reconfigure(), deleted, 10.0, "r2")
    [warning] = _warnings(effects)
    assert warning.startswith("release: the rollout promoted to 'canary'")
    _, effects = apply(None, Restore(None, promoted_v2()), deleted, 10.0, "r2")
    assert _warnings(effects) == [warning]
    made_stable = ENDINGS["v2 made stable"][0]
    _, effects = apply(promoted_v2(), Reconfigure(), made_stable, 10.0, "r2")
    assert _warnings(effects) == []
