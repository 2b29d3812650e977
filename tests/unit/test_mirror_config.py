"""A route's `mirror` settings: defaults, units, and clear errors for what cannot work."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from splitproxy.config.models import Route
from splitproxy.routing.table import build_route


def route(**mirror: Any) -> Route:
    return Route.model_validate({
        "name": "shop",
        "versions": {"stable": {"endpoints": ["http://127.0.0.1:9011"]},
                     "canary": {"endpoints": ["http://127.0.0.1:9012"]}},
        "weights": {"stable": 100, "canary": 0},
        "mirror": mirror})


def test_defaults_and_units() -> None:
    m = route(to="canary", max_body="1KiB", timeout="500ms",
              compare={"ignore_headers": [" X-Served-By "]}).mirror
    assert m is not None
    assert (m.percent, m.methods, m.max_body, m.timeout, m.max_in_flight) == (
        100.0, ("GET", "HEAD"), 1024, 0.5, 64)
    assert m.compare.body is False and m.compare.ignore_headers == ("x-served-by",)
    assert build_route(route(to="canary")).mirror == route(to="canary").mirror


@pytest.mark.parametrize(("mirror", "says"), [
    ({"to": "nope"}, "mirror.to"),
    ({"to": "canary", "percent": 0}, "percent"),
    ({"to": "canary", "percent": 101}, "percent"),
    ({"to": "canary", "methods": ["CONNECT"]}, "methods"),
    ({"to": "canary", "timeout": "0s"}, "timeout"),
    ({"to": "canary", "max_in_flight": 0}, "max_in_flight"),
    ({"to": "canary", "compare": {"body": True, "typo": 1}}, "typo"),
])
def test_bad_settings_are_refused_with_the_field(mirror: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as err:
        route(**mirror)
    assert says in str(err.value)


def test_a_shadow_only_version_is_judged_on_the_custom_metrics_alone() -> None:
    """At weight 0 the canary serves nobody: the built-in counts have nothing of it, but a
    custom metric (its shadow match rate) does; with the mirror gone, nothing is judged."""
    from splitproxy.rollout import machine
    from splitproxy.rollout.guard import plan

    matching = {"name": "shadow", "direction": "above", "threshold": 0.99,
                "events": 'm{to="{{version}}",result="match"}',
                "total": 'm{to="{{version}}"}'}
    data: dict[str, Any] = {
        "name": "shop",
        "versions": {"stable": {"endpoints": ["http://127.0.0.1:9011"]},
                     "canary": {"endpoints": ["http://127.0.0.1:9012"]}},
        "weights": {"stable": 100, "canary": 0},
        "analysis": {"max_error_rate": 0.01, "metrics": [matching]},
        "mirror": {"to": "canary"}}
    shadowed = Route.model_validate(data)
    keys = [t.key for t in plan(machine.start(shadowed, 0.0, "r1"), shadowed).tests]
    assert keys == ["canary:metric:shadow"]
    plain = Route.model_validate({**data, "mirror": None})
    assert plan(machine.start(plain, 0.0, "r1"), plain).tests == ()
