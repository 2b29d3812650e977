"""Canary analysis: one window of counters -> pass / fail / inconclusive, with the numbers.

Pure: `judge` takes samples and thresholds; no clock, no sockets, no event loop.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from splitproxy.analysis import Check, MetricVerdict, judge
from splitproxy.config import Analysis
from splitproxy.stats import VersionStats
from splitproxy.window import Sample

NOW = 1_700_000_000.0


def traffic(requests: int, errors: int = 0, seconds: float = 0.2) -> Sample:
    """`requests` answers, `errors` of them 500s, all `seconds` long."""
    stats = VersionStats("shop", "canary")
    for i in range(requests):
        stats.observe(500 if i < errors else 200, seconds)
    return Sample.of(stats)


def analysis(**kw: Any) -> Analysis:
    return Analysis.model_validate({"min_requests": 50, **kw})


def metric(check: Check, name: str) -> MetricVerdict:
    found = [m for m in check.metrics if m.metric == name]
    assert len(found) == 1, check.metrics
    return found[0]


def run(a: Analysis, canary: Sample, baseline: Sample | None = None) -> Check:
    return judge(a, "canary", canary, baseline, NOW)


# --------------------------------------------------------------------------- low traffic


@pytest.mark.parametrize(
    "thresholds",
    [
        {},
        {"max_p99_ms": 1},
        {"max_error_rate": 0.0, "max_p50_ms": 1, "max_p90_ms": 1, "max_p99_ms": 1},
        {"compare_to_baseline": {}},
    ],
)
@pytest.mark.parametrize("requests", [0, 1, 49])
def test_low_traffic_is_inconclusive_never_a_failure(
    thresholds: dict[str, Any], requests: int
) -> None:
    # Every request failed and was slow: still not a verdict below min_requests.
    check = run(analysis(**thresholds), traffic(requests, errors=requests, seconds=5.0),
                traffic(1000))
    assert check.result == "inconclusive"
    assert check.metrics and all(m.result == "inconclusive" for m in check.metrics)
    assert f"{requests} requests < min_requests 50" in check.metrics[0].reason
    assert check.requests == requests


def test_exactly_min_requests_is_judged() -> None:
    assert run(analysis(), traffic(50, errors=50)).result == "fail"


# --------------------------------------------------------------------------- error rate


@pytest.mark.parametrize(
    ("errors", "limit", "result", "reason"),
    [
        (0, 0.01, "pass", "0.0000 <= max 0.01"),
        (1, 0.01, "pass", "0.0100 <= max 0.01"),  # at the limit is not over it
        (2, 0.01, "fail", "0.0200 > max 0.01"),
        (50, 0.5, "pass", "0.5000 <= max 0.5"),
        (51, 0.5, "fail", "0.5100 > max 0.5"),
        (1, 0.0, "fail", "0.0100 > max 0.0"),
    ],
)
def test_error_rate_threshold(errors: int, limit: float, result: str, reason: str) -> None:
    check = run(analysis(max_error_rate=limit), traffic(100, errors))
    verdict = metric(check, "error_rate")
    assert (check.result, verdict.result) == (result, result)
    assert verdict.value == errors / 100
    assert verdict.limit == limit
    assert verdict.reason == reason


def test_no_error_threshold_and_no_comparison_judges_no_error_rate() -> None:
    check = run(analysis(max_error_rate=None, max_p99_ms=1000), traffic(100, errors=100))
    assert [m.metric for m in check.metrics] == ["p99"]
    assert check.result == "pass"


def test_nothing_to_judge_is_inconclusive() -> None:
    check = run(analysis(max_error_rate=None), traffic(100, errors=100))
    assert (check.result, check.metrics) == ("inconclusive", ())


# --------------------------------------------------------------------------- latency

# 100 requests of 200 ms fall in the (100, 250] ms bucket: p50 175, p90 235, p99 248.5 ms.
P50, P90, P99 = 175.0, 235.0, 248.5


@pytest.mark.parametrize(
    ("field", "name", "limit", "value", "result", "reason"),
    [
        ("max_p50_ms", "p50", 200, P50, "pass", "175.0ms <= max 200ms"),
        ("max_p50_ms", "p50", 150, P50, "fail", "175.0ms > max 150ms"),
        ("max_p90_ms", "p90", 240, P90, "pass", "235.0ms <= max 240ms"),
        ("max_p90_ms", "p90", 200, P90, "fail", "235.0ms > max 200ms"),
        ("max_p99_ms", "p99", 250, P99, "pass", "248.5ms <= max 250ms"),
        ("max_p99_ms", "p99", 240, P99, "fail", "248.5ms > max 240ms"),
    ],
)
def test_latency_thresholds(
    field: str, name: str, limit: float, value: float, result: str, reason: str
) -> None:
    check = run(analysis(max_error_rate=None, **{field: limit}), traffic(100))
    verdict = metric(check, name)
    assert (check.result, verdict.result) == (result, result)
    assert verdict.value == pytest.approx(value)
    assert verdict.limit == limit
    assert verdict.reason == reason


def test_one_failing_metric_fails_the_check_and_every_metric_keeps_its_numbers() -> None:
    a = analysis(max_error_rate=0.01, max_p50_ms=200, max_p90_ms=200, max_p99_ms=300)
    check = run(a, traffic(100, errors=0))
    assert check.result == "fail"
    assert {m.metric: m.result for m in check.metrics} == {
        "error_rate": "pass", "p50": "pass", "p90": "fail", "p99": "pass",
    }
    assert check.summary() == (
        "fail: canary 100 req, error_rate=0(pass), p50=175(pass), p90=235(fail), p99=248.5(pass)"
    )


# --------------------------------------------------------------------------- baseline


def compare(**kw: Any) -> Analysis:
    return analysis(compare_to_baseline={"error_rate_margin": 0.005, "latency_factor": 1.5}, **kw)


def test_shared_outage_passes_the_comparison_without_an_absolute_threshold() -> None:
    # Both versions answer half their requests with 500s: the canary is no worse.
    check = run(compare(max_error_rate=None), traffic(100, 50), traffic(100, 50))
    verdict = metric(check, "error_rate")
    assert (check.result, verdict.result) == ("pass", "pass")
    assert (verdict.value, verdict.baseline, verdict.limit) == (0.5, 0.5, None)
    assert verdict.reason == "0.5000 <= baseline 0.5000 + margin 0.005"


def test_shared_outage_still_fails_an_absolute_threshold() -> None:
    check = run(compare(max_error_rate=0.01), traffic(100, 50), traffic(100, 50))
    verdict = metric(check, "error_rate")
    assert (check.result, verdict.result) == ("fail", "fail")
    assert verdict.reason == "0.5000 > max 0.01"  # the failing check's reason is the verdict's
    assert (verdict.value, verdict.baseline, verdict.limit) == (0.5, 0.5, 0.01)


@pytest.mark.parametrize(
    ("canary_errors", "result"),
    [(10, "pass"), (15, "pass"), (16, "fail"), (100, "fail")],
)
def test_error_rate_margin_over_the_baseline(canary_errors: int, result: str) -> None:
    # Baseline 10/1000 = 0.01; the canary may reach 0.01 + 0.005.
    check = run(compare(max_error_rate=None), traffic(1000, canary_errors), traffic(1000, 10))
    assert metric(check, "error_rate").result == result


@pytest.mark.parametrize("baseline", [None, traffic(49), traffic(0)])
def test_baseline_with_too_few_requests_makes_the_comparison_inconclusive(
    baseline: Sample | None,
) -> None:
    check = run(compare(max_error_rate=None), traffic(100, errors=100), baseline)
    assert check.result == "inconclusive"
    assert {m.metric: m.result for m in check.metrics} == {
        "error_rate": "inconclusive", "p99": "inconclusive",
    }
    assert "baseline has too few requests" in metric(check, "error_rate").reason
    assert check.baseline_requests == (baseline.requests if baseline is not None else None)


def test_an_absolute_threshold_still_fails_without_a_usable_baseline() -> None:
    check = run(compare(max_error_rate=0.01), traffic(100, errors=100), traffic(10))
    assert metric(check, "error_rate").result == "fail"
    assert check.result == "fail"


@pytest.mark.parametrize(
    ("canary_s", "baseline_s", "result"),
    [
        (0.2, 0.2, "pass"),  # same speed
        (0.2, 0.150, "pass"),  # p99 248.5 ms <= 1.5 x 148.5 ms
        (0.2, 0.02, "fail"),  # p99 248.5 ms > 1.5 x 24.85 ms
        (0.02, 0.2, "pass"),  # faster than the baseline
    ],
)
def test_latency_factor_compares_p99_with_the_baseline(
    canary_s: float, baseline_s: float, result: str
) -> None:
    check = run(compare(max_error_rate=None), traffic(100, seconds=canary_s),
                traffic(100, seconds=baseline_s))
    verdict = metric(check, "p99")
    assert (check.result, verdict.result) == (result, result)
    assert verdict.baseline is not None and verdict.value is not None
    assert f"x {1.5}" in verdict.reason


def test_latency_factor_reason_has_both_numbers() -> None:
    check = run(compare(max_error_rate=None), traffic(100, seconds=0.2),
                traffic(100, seconds=0.02))
    assert metric(check, "p99").reason == "248.5ms > baseline 24.9ms x 1.5"


def test_absolute_latency_threshold_and_comparison_both_apply() -> None:
    # Within the factor of a slow baseline, but over the absolute p99.
    check = run(compare(max_error_rate=None, max_p99_ms=100), traffic(100, seconds=0.2),
                traffic(100, seconds=0.2))
    verdict = metric(check, "p99")
    assert verdict.result == "fail"
    assert "248.5ms > max 100ms" in verdict.reason


def test_check_round_trips_through_json_for_status_and_the_state_file() -> None:
    check = run(compare(max_p99_ms=300), traffic(100, 1), traffic(100))
    data = json.loads(json.dumps(check.to_dict()))
    assert data["result"] == check.result and data["time"] == NOW
    assert data["metrics"][0]["metric"] == "error_rate"
    assert data["metrics"][0]["value"] == 0.01
