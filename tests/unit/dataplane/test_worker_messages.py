"""messages.py: what crosses the pipe between the control process and a worker survives
pickling whole, and a worker's counters add up in the parent."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from splitproxy.config.headerroute import HeaderRoute, MatchKind
from splitproxy.config.mirror import Mirror
from splitproxy.config.models import Config
from splitproxy.dataplane.messages import Counters, Ready, Report, Stop, Stopped, Table
from splitproxy.dataplane.plane import EndpointHealth
from splitproxy.dataplane.stats import Stats
from splitproxy.routing import table

CONFIG = Config.model_validate({
    "routes": [{
        "name": "shop",
        "versions": {"stable": {"endpoints": ["http://127.0.0.1:9001"]},
                     "canary": {"endpoints": ["http://127.0.0.1:9002"]}},
        "weights": {"stable": 90, "canary": 10},
        "sticky": {"cookie": "sp"},
    }],
})


def counted() -> Stats:
    stats = Stats()
    s = stats.get("shop", "stable")
    s.set_limits((0.2,))
    s.observe(200, 0.003, 0.25)
    s.observe(502, 0.5, 0.1)
    s.errors["reset"] += 1
    s.client_aborts += 1
    stats.get("shop", "canary", synthetic=True).observe(200, 0.001)
    stats.bad_requests = 2
    stats.count_local("overload")
    return stats


@pytest.mark.parametrize("message", [
    Table.of(CONFIG, table.build(CONFIG, 7, {"shop": {"stable": 50, "canary": 50}},
                                 {"shop": "r3"})),
    Stop(2.5),
    Ready(8080),
    Report.of(counted(), [EndpointHealth("shop", "stable", "127.0.0.1:9001", True, 0, 1)]),
    Stopped(),
], ids=lambda m: type(m).__name__)
def test_every_message_survives_the_pipe(message: object) -> None:
    assert pickle.loads(pickle.dumps(message)) == message


def test_messages_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Stop(1.0).drain = 2.0  # type: ignore[misc]


def test_a_table_rebuilds_the_same_routing_in_the_worker() -> None:
    routing = table.build(CONFIG, 7, {"shop": {"stable": 50, "canary": 50}}, {"shop": "r3"})
    rebuilt = pickle.loads(pickle.dumps(Table.of(CONFIG, routing))).build()
    assert rebuilt.generation == 7
    (before,), (after,) = routing.routes, rebuilt.routes
    assert after.plan == before.plan
    assert after.run == "r3" and after.cookie_values == before.cookie_values


def test_a_table_carries_fractional_weights_and_header_routes_to_the_worker() -> None:
    tester = HeaderRoute(header="X-Tester", match=MatchKind.REGEX, value="qa-[0-9]+")
    routing = table.build(CONFIG, 8, {"shop": {"stable": 99.5, "canary": 0.5}}, {"shop": "r4"},
                          {"shop": (tester,)})
    rebuilt = pickle.loads(pickle.dumps(Table.of(CONFIG, routing))).build()
    (before,), (after,) = routing.routes, rebuilt.routes
    assert after.plan == before.plan and after.plan.weights == (99.5, 0.5)
    assert after.header_routes == (tester,) and after.plan.canary == "canary"
    assert after.steer_rules == before.steer_rules


def test_a_table_carries_the_mirror_in_force_to_the_worker() -> None:
    """A `set_mirror` step's mirror reaches the worker, and so does a step that turned the
    route's own `mirror` off (None is not "the config's")."""
    step = Mirror(to="canary", percent=10)
    routing = table.build(CONFIG, 9, mirrors={"shop": step})
    (after,) = pickle.loads(pickle.dumps(Table.of(CONFIG, routing))).build().routes
    assert after.mirror == step
    own = CONFIG.model_copy(update={"routes": (CONFIG.routes[0].model_copy(
        update={"mirror": Mirror(to="canary", percent=1)}),)})
    routing = table.build(own, 10, mirrors={"shop": None})
    (after,) = pickle.loads(pickle.dumps(Table.of(own, routing))).build().routes
    assert after.mirror is None
    assert table.build(own, 11).routes[0].mirror == Mirror(to="canary", percent=1)


def test_reports_of_two_workers_add_up() -> None:
    total = Stats()
    report = Report.of(counted(), [])
    for _ in range(2):
        for c in pickle.loads(pickle.dumps(report)).counters:
            c.add_to(total.get(c.route, c.version, c.synthetic))
    s = total.get("shop", "stable")
    assert s.responses == {200: 2, 502: 2}
    assert s.errors["reset"] == 2 and s.client_aborts == 2
    assert s.timed == 4 and s.over == {0.2: 2}
    assert sum(s.latency_counts) == 4
    assert total.get("shop", "canary", synthetic=True).responses == {200: 2}


def test_counters_copy_what_they_carry() -> None:
    stats = counted()
    c = Counters.of(stats.get("shop", "stable"))
    stats.get("shop", "stable").observe(200, 0.001)
    assert c.responses == {200: 1, 502: 1}
