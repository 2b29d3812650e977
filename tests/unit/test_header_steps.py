"""Header/cookie route steps and fractional weights in the rollout machine, pure calls; and
that integer-weight rollouts keep their identity and state files across the upgrade."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from splitproxy.config.models import Route
from splitproxy.rollout import Actor, Phase, RouteState, abort, advance, identity, promote, start
from splitproxy.rollout.events import Act, Action, Rebuild, Tick
from splitproxy.rollout.fold import apply
from splitproxy.rollout.machine import header_routes, weights
from splitproxy.routing.table import build_route

T0 = 1_700_000_000.0
TESTER = {"header": "X-Tester", "match": "exact", "value": "yes"}


def make_route(steps: list[Any]) -> Route:
    return Route.model_validate({
        "name": "shop",
        "versions": {"stable": {"endpoints": ["http://127.0.0.1:9001"]},
                     "canary": {"endpoints": ["http://127.0.0.1:9002"]}},
        "weights": {"stable": 100, "canary": 0},
        "rollout": {"steps": steps},
    })


ROUTE = make_route([{"pause": "1m"}, {"set_header_route": TESTER}, {"pause": {}},
                    {"set_weight": 0.5}, {"pause": {}}, {"set_weight": 100}])


def advanced(now: float = T0) -> RouteState:
    state, _ = advance(start(ROUTE, T0, "r1"), ROUTE, now)
    return state


def test_a_header_route_is_in_force_from_its_step_on() -> None:
    before = advanced(T0)
    assert before.step == 0 and header_routes(before, ROUTE) == ()
    after = advanced(T0 + 61)
    assert after.phase == Phase.PAUSED and after.step == 2
    assert [h.header for h in header_routes(after, ROUTE)] == ["X-Tester"]
    assert weights(after, ROUTE) == {"stable": 100, "canary": 0}  # still weight 0


def test_the_step_rebuilds_the_routing_table_with_the_route_at_weight_0() -> None:
    state = advanced(T0)
    new, effects = apply(state, Tick(leader=True), ROUTE, T0 + 61, "r1")
    assert any(isinstance(e, Rebuild) for e in effects)
    entry = build_route(ROUTE, weights(new, ROUTE), new.run, header_routes(new, ROUTE))
    assert entry.plan.canary == "canary" and len(entry.steer_rules) == 1


def test_an_abort_removes_the_header_routes() -> None:
    state = abort(advanced(T0 + 61), "manual: test", T0 + 62, Actor.OPERATOR)
    assert header_routes(state, ROUTE) == ()
    _, effects = apply(advanced(T0 + 61), Act(Action.ABORT, reason="test"), ROUTE, T0 + 62,
                       "r1")
    assert any(isinstance(e, Rebuild) for e in effects)


def test_the_promotion_removes_the_header_routes() -> None:
    state = promote(advanced(T0 + 61), ROUTE, T0 + 62, full=True)
    assert state.phase == Phase.PROMOTED and header_routes(state, ROUTE) == ()


def test_a_fractional_weight_step_leaves_the_baseline_the_exact_rest() -> None:
    state = promote(advanced(T0 + 61), ROUTE, T0 + 62, full=False)
    state, _ = advance(state, ROUTE, T0 + 63)
    assert state.weight == 0.5
    assert weights(state, ROUTE) == {"stable": 99.5, "canary": 0.5}
    route = make_route([{"set_weight": 0.07}, {"pause": {}}])
    state, _ = advance(start(route, T0, "r1"), route, T0)
    assert weights(state, route) == {"stable": 99.93, "canary": 0.07}


def _old_identity(route: Route) -> str:
    """The identity as splitproxy computed it before header routes and fractions."""
    assert route.rollout is not None
    ident = {"versions": list(route.versions), "baseline": route.baseline,
             "canary": route.canary, "strategy": route.strategy, "active": route.active,
             "steps": [{"set_weight": s.set_weight,
                        "pause": s.pause.model_dump() if s.pause else None}
                       for s in route.rollout.steps],
             "revision": route.rollout.revision}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def test_integer_weight_rollouts_keep_their_identity_and_state_file() -> None:
    route = make_route([{"set_weight": 10}, {"pause": "30s"}, {"set_weight": 100}])
    assert identity(route) == _old_identity(route)  # no rollout restarts on the upgrade
    state, _ = advance(start(route, T0, "r1"), route, T0)
    text = json.dumps(state.to_json())
    assert '"weight": 10,' in text  # an int, as before: not 10.0
    assert RouteState.from_json(json.loads(text)) == state
    assert weights(state, route) == {"stable": 90, "canary": 10}
    assert all(type(w) is int for w in weights(state, route).values())
