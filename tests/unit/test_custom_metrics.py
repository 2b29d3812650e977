"""Custom metrics (`analysis.metrics`), without I/O: the settings a load refuses, the queries
as sent, and the guard's tests on their samples (counts like the built-in error rate, gauges
by the sign test), with dry-run metrics shown but never deciding."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from splitproxy.config.metrics import CustomMetric, promql_duration, render
from splitproxy.config.models import Route
from splitproxy.rollout import Phase, RouteState, machine
from splitproxy.rollout.budget import step_alpha
from splitproxy.rollout.custom import MetricSample
from splitproxy.rollout.events import Measurement
from splitproxy.rollout.guard import assess, passed, plan, report
from splitproxy.rollout.tally import Tally
from splitproxy.rollout.verdicts import Outcome

T0 = 1_717_380_000.0
CPU = {"name": "cpu", "query": 'avg(cpu{version="{{version}}"})', "threshold": 0.8,
       "direction": "below", "block": "1s"}
SUCCESS = {"name": "delivery", "events": 'deliveries_total{version="{{version}}",ok="1"}',
           "total": 'deliveries_total{version="{{version}}"}', "threshold": 0.99,
           "direction": "above"}


def metric(**kw: Any) -> CustomMetric:
    return CustomMetric.model_validate(kw)


# -- settings --------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "message"), [
    ({**CPU, **{k: SUCCESS[k] for k in ("events", "total")}}, "either `query`"),
    ({k: v for k, v in SUCCESS.items() if k != "total"}, "needs both `events` and `total`"),
    ({**CPU, "threshold": None}, "judges nothing"),
    ({**CPU, "query": 'cpu{pod="{{pod}}",version="{{version}}"}'}, "unknown placeholder {{pod}}"),
    ({**CPU, "query": "avg(cpu)"}, "must select one version with {{version}}"),
    ({**SUCCESS, "threshold": 99.0}, "a rate in (0, 1)"),
    ({**SUCCESS, "block": "1m"}, "`block` is for gauges"),
    ({k: v for k, v in CPU.items() if k != "direction"}, "direction"),
    ({**CPU, "direction": "up"}, "'below' or 'above'"),
])
def test_a_metric_that_cannot_be_judged_is_refused_with_why(fields: dict[str, Any],
                                                            message: str) -> None:
    with pytest.raises(ValidationError) as err:
        CustomMetric.model_validate(fields)
    assert message in str(err.value)


def test_metric_names_are_unique_within_an_analysis() -> None:
    with pytest.raises(ValidationError, match="the name 'cpu' is used twice"):
        make(metrics=[CPU, {**CPU, "threshold": 0.5}])


def test_placeholders_are_filled_per_version_and_interval_is_a_promql_duration() -> None:
    m = metric(**{**CPU, "query": 'rate(cpu_seconds_total{route="{{ route }}",'
                  'version="{{version}}"}[{{interval}}])', "interval": "90s"})
    assert render(m.query or "", "shop", "canary", m.interval) == \
        'rate(cpu_seconds_total{route="shop",version="canary"}[90s])'
    assert (promql_duration(60.0), promql_duration(1.5)) == ("60s", "1500ms")
    assert (m.block_seconds, metric(**{**CPU, "block": None}).block_seconds) == (1.0, 60.0)


# -- the guard -------------------------------------------------------------------------------
def make(rollout: dict[str, Any] | None = None, **analysis: Any) -> Route:
    data: dict[str, Any] = {
        "name": "shop",
        "versions": {"stable": {"endpoints": ["http://127.0.0.1:9001"]},
                     "canary": {"endpoints": ["http://127.0.0.1:9002"]}},
        "weights": {"stable": 50, "canary": 50},
        "analysis": {"max_error_rate": None, "alpha": 0.01, **analysis},
    }
    if rollout is not None:
        data["rollout"] = rollout
    return Route.model_validate(data)


def start(route: Route) -> RouteState:
    return machine.start(route, T0, "r1")


def feed(state: RouteState, route: Route, samples: list[dict[str, MetricSample]],
         start_at: float = T0) -> RouteState:
    for i, custom in enumerate(samples, start=1):
        a = assess(state, Measurement(state.run, state.step, {}, custom=custom), route,
                   start_at + i)
        state = replace(state, evidence=a.evidence, checks=(*state.checks, a.check))
    return state


def gauge(canary: float, stable: float = 0.3, name: str = "cpu") -> dict[str, MetricSample]:
    return {name: MetricSample(values={"canary": canary, "stable": stable})}


def test_custom_tests_are_planned_per_version_beside_the_built_in_ones() -> None:
    route = make(max_error_rate=0.01, metrics=[
        {**CPU, "compare_to_baseline": {"margin": 0.2}}, SUCCESS])
    assert [t.key for t in plan(start(route), route).tests] == [
        "canary:error_rate", "canary:metric:cpu", "canary:metric:cpu~stable",
        "canary:metric:delivery"]


def test_a_gauge_over_its_limit_aborts_and_says_which_metric_with_its_numbers() -> None:
    route = make(metrics=[CPU])
    state = feed(start(route), route, [gauge(0.5)] * 4 + [gauge(0.95)] * 40)
    shown = report(state, route)
    assert shown is not None and shown["tests"] == []
    [entry] = shown["metrics"]
    assert entry["outcome"] == "fail" and shown["decided_by"] == "canary:metric:cpu"
    assert (entry["kind"], entry["direction"], entry["dry_run"]) == ("gauge", "below", False)
    assert entry["summary"].startswith("canary cpu ")
    assert " > 0.8: e=" in entry["summary"] and entry["error"] is None
    assert state.checks[-1]["result"] == "fail"


def test_a_falling_success_rate_is_judged_as_the_built_in_error_rate_is() -> None:
    route = make(metrics=[SUCCESS])
    healthy = {"delivery": MetricSample(counts={"canary": (998, 1000), "stable": (999, 1000)})}
    state = feed(start(route), route, [healthy] * 10)
    [entry] = report(state, route)["metrics"]  # type: ignore[index]
    assert entry["outcome"] == "pass"  # 99.8% against a 99% floor, 10,000 deliveries
    assert (entry["threshold"], entry["events"], entry["misses"]) == (0.99, 9980, 20)
    assert entry["lower"] < entry["estimate"] < entry["upper"]
    assert entry["summary"].startswith("canary delivery 99.8% [")
    assert " > 99%: e=" in entry["summary"]
    falling = {"delivery": MetricSample(counts={"canary": (900, 1000), "stable": (999, 1000)})}
    state = feed(state, route, [falling] * 30, start_at=T0 + 10)
    [entry] = report(state, route)["metrics"]  # type: ignore[index]
    assert entry["outcome"] == "fail"
    assert " < 99%: e=" in entry["summary"] and "misses)" in entry["summary"]


def test_a_counts_comparison_uses_the_built_in_two_sample_test_on_misses() -> None:
    route = make(metrics=[{**SUCCESS, "threshold": None, "compare_to_baseline": {"margin": 0.5}}])
    worse = {"delivery": MetricSample(counts={"canary": (950, 1000), "stable": (995, 1000)})}
    state = feed(start(route), route, [worse] * 150)  # 25 slices of 6 s (a 50% canary)
    [entry] = report(state, route)["metrics"]  # type: ignore[index]
    assert (entry["against"], entry["outcome"]) == ("stable", "fail")
    assert entry["summary"].startswith("canary delivery misses vs baseline x10")


def test_dry_run_metrics_are_judged_and_shown_but_never_abort_hold_or_spend() -> None:
    route = make(max_error_rate=0.01, metrics=[{**CPU, "dry_run": True}],
                 rollout={"steps": [{"set_weight": 50}, {"pause": "5s"}]})
    state = replace(start(route), step=1, weight=50, phase=Phase.PROGRESSING)
    ok = Tally(100, 0, 100)
    for i in range(1, 41):
        a = assess(state, Measurement(state.run, state.step, {"canary": ok, "stable": ok},
                                      custom=gauge(0.95)), route, T0 + i)
        state = replace(state, evidence=a.evidence, checks=(*state.checks, a.check))
        assert a.outcome is not Outcome.FAIL
    shown = report(state, route)
    assert shown is not None
    [entry] = shown["metrics"]
    assert (entry["outcome"], entry["dry_run"]) == ("fail", True)  # what it would have done
    assert shown["outcome"] == "pass" and passed(state, route)  # the error rate alone decides
    # The dry-run metric spends no alpha: the error rate keeps the whole share.
    assert shown["alpha_per_test"] == pytest.approx(step_alpha(0.01, 0, 1, tests=1))
    assert entry["fail_at"] == pytest.approx(shown["fail_at"])


def test_a_failed_or_empty_query_is_inconclusive_and_holds_the_step() -> None:
    route = make(max_error_rate=0.01, metrics=[CPU],
                 rollout={"steps": [{"set_weight": 50}, {"pause": "5s"}]})
    state = replace(start(route), step=1, weight=50, phase=Phase.PROGRESSING)
    ok = Tally(100, 0, 100)
    broken = {"cpu": MetricSample(error="canary: no data (the query returned no series)")}
    for i in range(1, 41):
        a = assess(state, Measurement(state.run, state.step, {"canary": ok, "stable": ok},
                                      custom=broken), route, T0 + i)
        state = replace(state, evidence=a.evidence, checks=(*state.checks, a.check))
    shown = report(state, route)
    assert shown is not None
    assert [t["outcome"] for t in shown["tests"]] == ["pass"]
    [entry] = shown["metrics"]
    assert (entry["outcome"], entry["blocks"]) == ("inconclusive", 0)
    assert entry["error"] == "canary: no data (the query returned no series)"
    assert shown["outcome"] == "inconclusive" and shown["decided_by"] == "canary:metric:cpu"
    assert not passed(state, route)  # never a pass on no data ...
    assert state.checks[-1]["metric_errors"] == {"cpu": entry["error"]}  # ... and says why


def test_a_gauge_against_the_baseline_follows_a_load_both_versions_share() -> None:
    cpu = {**CPU, "threshold": None, "compare_to_baseline": {"margin": 0.2}}
    route = make(metrics=[cpu])
    loads = [0.2 + 0.05 * (i % 10) for i in range(60)]
    state = feed(start(route), route, [gauge(1.1 * x, x) for x in loads])
    [entry] = report(state, route)["metrics"]  # type: ignore[index]
    assert entry["outcome"] == "pass" and entry["paired"]
    state = feed(start(route), route, [gauge(1.5 * x, x) for x in loads])
    [entry] = report(state, route)["metrics"]  # type: ignore[index]
    assert entry["outcome"] == "fail"


def test_changing_a_metric_restarts_the_tests() -> None:
    a = make(metrics=[CPU])
    b = make(metrics=[{**CPU, "query": 'max(cpu{version="{{version}}"})'}])
    c = make(metrics=[{**CPU, "dry_run": True}])
    keys = {plan(start(r), r).key for r in (a, b, c)}
    assert len(keys) == 3


# -- the shipped example ---------------------------------------------------------------------
def _uncomment(text: str, key: str) -> str:
    """`text` with the commented-out block that starts with `# key` made live."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(f"# {key}"))
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    end = start
    while end < len(lines) and lines[end].startswith(indent + "#"):
        lines[end] = indent + lines[end][len(indent) + 2:]
        end += 1
    return "\n".join(lines) + "\n"


def test_the_commented_examples_of_metrics_and_notifications_load(tmp_path: Any) -> None:
    from pathlib import Path

    from splitproxy.config.models import load
    from splitproxy.config.steps import NOTIFICATIONS, WebhookFormat

    example = Path(__file__).parents[2] / "config" / "example.yaml"
    path = tmp_path / "example.yaml"
    path.write_text(_uncomment(_uncomment(example.read_text(), "metrics:"), "- on: all"))
    [route, *_] = load(path).routes
    assert route.analysis is not None and route.rollout is not None
    assert [(m.name, m.counts) for m in route.analysis.metrics] == [("delivery", True),
                                                                  ("cpu", False)]
    abort, chat = route.rollout.webhooks
    assert chat.on == NOTIFICATIONS and chat.format == WebhookFormat.SLACK
