"""Exact counts: the hot path's latency counters, and differences of cumulative counters between
readings (local, every replica's through Redis, Prometheus' raw series). No sockets."""

from __future__ import annotations

from typing import Any

import pytest

from splitproxy.control.sources import fleet
from splitproxy.control.sources import prometheus as promsource
from splitproxy.dataplane.stats import VersionStats
from splitproxy.rollout.tally import (
    ERRORS,
    REQUESTS,
    TIMED,
    CounterDiff,
    Tally,
    series_of,
    slow_metric,
)

LIMITS = (0.2,)


def test_each_limit_counts_requests_whose_upstream_time_exceeds_it() -> None:
    s = VersionStats("shop", "canary")
    s.set_limits((0.1, 0.2, 0.5))
    for upstream in (0.05, 0.1, 0.12, 0.2, 0.3, 0.6):
        s.observe(200, upstream + 1.0, upstream)  # the client took a second more: not counted
    s.observe(502, 0.01)  # no upstream time (never reached an upstream): not timed
    assert (s.timed, s.over) == (6, {0.1: 4, 0.2: 2, 0.5: 1})
    assert sum(s.responses.values()) == 7


def test_counts_of_a_limit_a_reload_dropped_stay_exported() -> None:
    s = VersionStats("shop", "canary")
    s.set_limits((0.2,))
    s.observe(200, 0.3, 0.3)
    s.set_limits((0.4,))
    s.observe(200, 0.3, 0.3)
    assert s.over == {0.2: 1, 0.4: 0}


def stats(version: str, ok: int, errors: int = 0, slow: int = 0) -> VersionStats:
    s = VersionStats("shop", version)
    s.set_limits(LIMITS)
    for i in range(ok + errors):
        upstream = 0.3 if i < slow else 0.01
        s.observe(500 if i < errors else 200, upstream, upstream)
    return s


def test_series_of_a_route() -> None:
    out = series_of([stats("canary", 8, errors=2, slow=3), VersionStats("other", "x")],
                    "shop", LIMITS, synthetic=False, source="me")
    assert out == {("canary", REQUESTS, "me"): 10, ("canary", ERRORS, "me"): 2,
                   ("canary", TIMED, "me"): 10, ("canary", slow_metric(0.2), "me"): 3}


def test_the_first_reading_only_sets_the_starting_point() -> None:
    diff = CounterDiff()
    assert diff.apply({("canary", REQUESTS, "a"): 500.0}, LIMITS, 0.0) == {
        "canary": Tally(0, 0, 0, {0.2: 0})}
    got = diff.apply({("canary", REQUESTS, "a"): 530.0, ("canary", ERRORS, "a"): 3.0},
                     LIMITS, 1.0)
    assert got["canary"] == Tally(30, 3, 0, {0.2: 0})


def test_series_are_summed_with_resets_new_and_missing_series_handled() -> None:
    diff = CounterDiff()
    diff.apply({("canary", REQUESTS, "a"): 100.0, ("canary", REQUESTS, "b"): 40.0}, LIMITS, 0)
    # a restarted (its counter went down: all new), b missed a scrape, c is a new replica.
    got = diff.apply({("canary", REQUESTS, "a"): 7.0, ("canary", REQUESTS, "c"): 5.0},
                     LIMITS, 1)
    assert got["canary"].requests == 12
    # b comes back: only what it did since its last value counts, never all of it again.
    got = diff.apply({("canary", REQUESTS, "a"): 7.0, ("canary", REQUESTS, "b"): 45.0,
                      ("canary", REQUESTS, "c"): 5.0}, LIMITS, 2)
    assert got["canary"].requests == 5


def test_reset_forgets_everything() -> None:
    diff = CounterDiff()
    diff.apply({("canary", REQUESTS, "a"): 100.0}, LIMITS, 0)
    diff.reset()
    assert diff.apply({("canary", REQUESTS, "a"): 150.0}, LIMITS, 1)["canary"].requests == 0


def vector(*series: tuple[dict[str, str], str]) -> list[dict[str, Any]]:
    return [{"metric": labels, "value": [0, value]} for labels, value in series]


def test_prometheus_raw_counters_become_series() -> None:
    common = {"route": "shop", "version": "canary", "instance": "10.0.0.1:9901", "job": "sp"}
    out = promsource.parse(vector(
        ({"__name__": "splitproxy_requests_total", "code": "200", **common}, "90"),
        ({"__name__": "splitproxy_requests_total", "code": "503", **common}, "10"),
        ({"__name__": "splitproxy_upstream_timed_requests_total", **common}, "95"),
        ({"__name__": "splitproxy_upstream_slow_requests_total", "over": "0.2", **common},
         "4"),
        ({"__name__": "splitproxy_synthetic_requests_total", "code": "200", **common}, "7"),
        ({"__name__": "splitproxy_requests_total", "code": "200", **common,
          "version": "stable"}, "NaN"),
    ))
    sums: dict[str, float] = {}
    for (version, what, _), value in out.items():
        sums[f"{version} {what}"] = sums.get(f"{version} {what}", 0.0) + value
    assert sums == {"canary requests": 107, "canary errors": 10, "canary timed": 95,
                    f"canary {slow_metric(0.2)}": 4}
    # Every series keeps its own identity: a replica's, a status code's, synthetic apart.
    assert len({key for key in out if key[1] == REQUESTS}) == 3


def test_the_prometheus_query_reads_every_family_of_the_route_at_once() -> None:
    assert promsource.query("shop", False) == (
        '{__name__=~"splitproxy_requests_total|splitproxy_upstream_timed_requests_total|'
        'splitproxy_upstream_slow_requests_total",route="shop"}')
    assert "splitproxy_synthetic_upstream_slow_requests_total" in promsource.query("shop", True)


def test_a_replica_s_published_counters_round_trip_under_its_own_name() -> None:
    series = {("canary", REQUESTS, ""): 12.0, ("canary", slow_metric(0.2), "|synthetic"): 1.0}
    back = fleet.decode("r1", fleet.encode(series))
    assert back == {("canary", REQUESTS, "r1|"): 12.0,
                    ("canary", slow_metric(0.2), "r1||synthetic"): 1.0}


@pytest.mark.parametrize("raw", ['[1]', '{"a": 1}', '{"a\\tb\\tc": "x"}', '{"a\\tb\\tc": true}'])
def test_unreadable_published_counters_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        fleet.decode("r1", raw)
