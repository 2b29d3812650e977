"""Custom metrics' readings turned into samples (`control.sources.custom`), without sockets:
exact differences of raw counters per series, for counts; values passed on, for gauges."""

from __future__ import annotations

from typing import Any

from splitproxy.config.models import Route
from splitproxy.control.sources.custom import CustomReader, Fetched
from splitproxy.rollout.custom import MetricSample

ROUTE = Route.model_validate({
    "name": "shop",
    "versions": {"stable": {"endpoints": ["http://127.0.0.1:9001"]},
                 "canary": {"endpoints": ["http://127.0.0.1:9002"]}},
    "weights": {"stable": 50, "canary": 50},
    "analysis": {"metrics": [
        {"name": "delivery", "events": 'd{version="{{version}}",ok="1"}',
         "total": 'd{version="{{version}}"}', "threshold": 0.99, "direction": "above"},
        {"name": "cpu", "query": 'cpu{version="{{version}}"}', "threshold": 0.8,
         "direction": "below"}]},
})


def counters(**series: float) -> Fetched:
    """`canary_events_a=5`: version canary, query events, series labels `a`."""
    out: dict[tuple[str, str, str], Any] = {}
    for name, value in series.items():
        version, which, labels = name.split("_")
        out[(version, which, labels)] = value
    return Fetched({}, series=out)


def test_counts_are_exact_differences_per_series_from_the_first_reading_on() -> None:
    reader = CustomReader()
    first = reader.samples(ROUTE, {"delivery": counters(canary_events_a=900, canary_total_a=1000,
                                                        canary_total_b=50)}, 0.0)
    assert first["delivery"] == MetricSample(counts={"canary": (0, 0)})  # the starting point
    # Replica b restarted (its counter went down), a new series appeared, a failed reading.
    second = reader.samples(ROUTE, {"delivery": counters(
        canary_events_a=990, canary_total_a=1100, canary_total_b=7, stable_total_a=40,
        stable_events_a=40)}, 1.0)
    assert second["delivery"].counts == {"canary": (90, 107), "stable": (40, 40)}
    failed = reader.samples(ROUTE, {"delivery": Fetched({}, error="HTTP 503")}, 2.0)
    assert failed["delivery"] == MetricSample(error="HTTP 503")
    third = reader.samples(ROUTE, {"delivery": counters(
        canary_events_a=1000, canary_total_a=1120, canary_total_b=7, stable_total_a=40,
        stable_events_a=40)}, 3.0)
    assert third["delivery"].counts["canary"] == (10, 20)  # nothing lost to the failure
    reader.reset("shop")  # a new run: counts from its own first reading
    again = reader.samples(ROUTE, {"delivery": counters(canary_events_a=2000,
                                                        canary_total_a=3000)}, 4.0)
    assert again["delivery"].counts == {"canary": (0, 0)}


def test_gauges_pass_their_values_on_and_a_removed_metric_is_dropped() -> None:
    reader = CustomReader()
    out = reader.samples(ROUTE, {
        "cpu": Fetched({}, values={"canary": 0.5}, error="stable: no data"),
        "gone": Fetched({}, values={"canary": 1.0})}, 0.0)
    assert out == {"cpu": MetricSample(values={"canary": 0.5}, error="stable: no data")}
