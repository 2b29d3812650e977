"""`set_mirror` steps (Argo's `setMirrorRoute`) in the config and the rollout machine, pure
calls: the shorthand and its errors, the mirror in force from the step on, turned off by a
later step, the abort and the promotion; the route's own `mirror` around them; identities of
rollouts without the step unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from splitproxy.cli.demo import describe_steps
from splitproxy.config.mirror import Mirror
from splitproxy.config.models import Config, Route
from splitproxy.control.dashboard import plan
from splitproxy.rollout import Actor, Phase, abort, advance, identity, promote, start
from splitproxy.rollout.events import Act, Action, Rebuild, Tick
from splitproxy.rollout.fold import apply
from splitproxy.rollout.machine import mirror
from splitproxy.rollout.notices import describe_step
from splitproxy.routing.table import build_route

T0 = 1_700_000_000.0


def make_route(steps: list[Any], **fields: Any) -> Route:
    return Route.model_validate({
        "name": "shop",
        "versions": {"stable": {"endpoints": ["http://127.0.0.1:9001"]},
                     "canary": {"endpoints": ["http://127.0.0.1:9002"]}},
        "weights": {"stable": 100, "canary": 0},
        "rollout": {"steps": steps}, **fields})


ROUTE = make_route([{"pause": "1m"}, {"set_mirror": {"percent": 10, "timeout": "500ms"}},
                    {"pause": {}}, {"set_mirror": 0}, {"pause": {}}, {"set_weight": 100}])


def test_the_shorthand_and_the_settings() -> None:
    assert ROUTE.rollout is not None
    first, off = ROUTE.rollout.steps[1].set_mirror, ROUTE.rollout.steps[3].set_mirror
    assert first is not None and off is not None
    assert first.mirror("canary") == Mirror(to="canary", percent=10, timeout=0.5)
    assert off.percent == 0 and off.mirror("canary") is None
    assert describe_step(ROUTE.rollout.steps[1]) == "set_mirror 10% to the canary"
    assert describe_step(ROUTE.rollout.steps[3]) == "set_mirror off"


@pytest.mark.parametrize(("step", "says"), [
    ({"set_mirror": 101}, "less than or equal to 100"),
    ({"set_mirror": -1}, "greater than or equal to 0"),
    ({"set_mirror": {"percent": 5, "to": "stable"}}, "to"),  # always the canary
    ({"set_mirror": {}}, "percent"),
    ({"set_mirror": 5, "set_weight": 5}, "a step is one of"),
])
def test_bad_mirror_steps_are_refused_clearly(step: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make_route([step])
    assert says in str(caught.value)


def test_the_mirror_is_in_force_from_its_step_until_a_later_one_turns_it_off() -> None:
    state, _ = advance(start(ROUTE, T0, "r1"), ROUTE, T0)
    assert state.step == 0 and mirror(state, ROUTE) is None
    state, _ = advance(state, ROUTE, T0 + 61)
    assert (state.phase, state.step) == (Phase.PAUSED, 2)
    assert mirror(state, ROUTE) == Mirror(to="canary", percent=10, timeout=0.5)
    promoted, _ = apply(state, Act(Action.PROMOTE), ROUTE, T0 + 62, "r1")
    assert promoted.step == 3 and mirror(promoted, ROUTE) is not None
    new, effects = apply(promoted, Tick(leader=True), ROUTE, T0 + 62, "r1")
    assert new.step == 4 and mirror(new, ROUTE) is None
    assert any(isinstance(e, Rebuild) for e in effects)  # the data plane stops copying


def test_the_step_rebuilds_the_table_with_the_canary_as_the_shadow() -> None:
    state, _ = advance(start(ROUTE, T0, "r1"), ROUTE, T0)
    new, effects = apply(state, Tick(leader=True), ROUTE, T0 + 61, "r1")
    assert any(isinstance(e, Rebuild) for e in effects)
    entry = build_route(ROUTE, mirror=mirror(new, ROUTE))
    assert entry.mirror is not None and (entry.mirror.to, entry.mirror.percent) == (
        "canary", 10)


def test_an_abort_and_the_promotion_end_the_steps_mirror() -> None:
    state, _ = advance(start(ROUTE, T0, "r1"), ROUTE, T0 + 61)
    assert mirror(abort(state, "manual: test", T0 + 62, Actor.OPERATOR), ROUTE) is None
    assert mirror(promote(state, ROUTE, T0 + 62, full=True), ROUTE) is None


def test_the_routes_own_mirror_serves_around_the_steps() -> None:
    route = make_route([{"set_mirror": 100}, {"pause": {}}, {"set_weight": 100}],
                       mirror={"to": "canary", "percent": 1})
    state = start(route, T0, "r1")
    assert mirror(state, route) == route.mirror  # before the step
    state, _ = advance(state, route, T0)
    assert mirror(state, route) == Mirror(to="canary", percent=100)
    assert mirror(abort(state, "x", T0 + 1, Actor.OPERATOR), route) == route.mirror


def test_rollouts_without_mirror_steps_keep_their_identity() -> None:
    steps: list[Any] = [{"set_weight": 10}, {"pause": "30s"}]
    assert identity(make_route(steps)) == identity(make_route(steps, mirror={"to": "canary"}))
    assert ROUTE.rollout is not None
    dumped = [s.identity_dump() for s in make_route(steps).rollout.steps]  # type: ignore
    assert all("set_mirror" not in d and "set_header_route" not in d for d in dumped)
    assert "set_mirror" in ROUTE.rollout.steps[1].identity_dump()


def test_the_dashboard_and_the_demo_name_the_mirror_steps() -> None:
    config = Config(routes=(ROUTE,))
    steps = plan(config)["routes"]["shop"]["steps"]
    assert steps[1] == {"set_mirror": "10% to the canary"} and steps[3] == {"set_mirror": "off"}
    assert "mirror 10% to the canary" in describe_steps(ROUTE)
