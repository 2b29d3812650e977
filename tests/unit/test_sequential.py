"""Anytime-valid verdicts: edge counts, slices, serialisation, summaries, alpha spending.

Pure: counts and `now` are plain numbers. The error rates themselves are measured in
test_guard_sim.py; here each behaviour is pinned with a small, exact case.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from splitproxy.rollout.budget import step_alpha, total_alpha
from splitproxy.rollout.evidence import (
    FAIL_RATIOS,
    binomial_log_e,
    log_mean_exp,
    lower_bound,
    upper_bound,
)
from splitproxy.rollout.sequential import (
    RateLimit,
    RateState,
    RatioLimit,
    RatioState,
    judge,
    judge_ratio,
    latency_threshold,
    observe,
    observe_ratio,
)
from splitproxy.rollout.verdicts import Outcome

LIMIT = RateLimit(threshold=0.01, alpha=0.01)


def run(limit: RateLimit, ticks: list[tuple[int, int]]) -> RateState:
    """Feed (events, trials) per one-second tick, from a test started at 0."""
    state = RateState()
    for t, (events, trials) in enumerate(ticks, start=1):
        state = observe(limit, state, events, trials, float(t))
    return state


def run_ratio(limit: RatioLimit, ticks: list[tuple[int, int, int, int]]) -> RatioState:
    state = RatioState()
    for t, counts in enumerate(ticks, start=1):
        state = observe_ratio(limit, state, *counts, now=float(t))
    return state


# --------------------------------------------------------------------------- rate test


@pytest.mark.parametrize(("ticks", "outcome"), [
    ([], Outcome.INCONCLUSIVE),  # n = 0
    ([(0, 10)] * 5, Outcome.INCONCLUSIVE),  # 50 clean requests prove little against 1%
    ([(1, 10)] + [(0, 10)] * 4, Outcome.INCONCLUSIVE),  # 1 in 50: no min_requests cliff
    ([(0, 10)] * 60, Outcome.PASS),  # 600 clean requests: below 1% at beta 0.05
    ([(10, 10)] * 7, Outcome.FAIL),  # S = n: every request fails, two slices
    ([(3, 10)] * 12, Outcome.FAIL),  # 30% errors
    ([(1, 100)] * 600, Outcome.INCONCLUSIVE),  # exactly at the threshold: never decides
], ids=["no-requests", "clean-50", "one-in-50", "clean-600", "all-fail", "30pct", "at-1pct"])
def test_rate_verdicts(ticks: list[tuple[int, int]], outcome: Outcome) -> None:
    assert judge(LIMIT, run(LIMIT, ticks)).outcome is outcome


def test_no_requests_reads_as_such() -> None:
    verdict = judge(LIMIT, RateState())
    assert verdict.estimate is None
    assert verdict.interval() == (0.0, 1.0)
    assert "no requests yet" in verdict.summary()


def test_fail_summary_names_estimate_interval_evidence_and_counts() -> None:
    verdict = judge(LIMIT, run(LIMIT, [(2, 10)] * 15))
    assert verdict.outcome is Outcome.FAIL
    text = verdict.summary("error rate", "errors")
    assert re.fullmatch(r"error rate 20% \[\d+(\.\d+)?%, \d+(\.\d+)?%\] > 1%: e=\S+ >= 100 "
                        r"\(n=150, 30 errors\)", text), text
    lo, hi = verdict.interval()
    assert 0.01 < lo < 0.2 < hi < 1.0


def test_pass_is_exactly_the_upper_bound_under_the_threshold() -> None:
    for clean in (400, 440, 460, 480, 520):
        verdict = judge(LIMIT, run(LIMIT, [(0, clean)]))
        passed = verdict.outcome is Outcome.PASS
        assert passed == (verdict.interval()[1] <= LIMIT.threshold + 1e-9), clean


def test_a_burst_inside_one_slice_is_one_observation() -> None:
    """Ten errors in one tick (a GC pause) at the start of a step: the plain binomial mixture
    on cumulative counts is far past its fail line, the bet on slices is not."""
    state = run(LIMIT, [(10, 10), (0, 10), (0, 10)])
    assert state.slices == 1
    assert binomial_log_e(state.events, state.trials, 0.01, FAIL_RATIOS) > math.log(100)
    assert judge(LIMIT, state).outcome is Outcome.INCONCLUSIVE
    state = run(LIMIT, [(10, 10)] + [(0, 10)] * 60)
    assert judge(LIMIT, state).outcome is not Outcome.FAIL


def test_tiny_threshold_and_huge_counts_stay_finite() -> None:
    tiny = RateLimit(threshold=1e-4, alpha=0.001)
    assert judge(tiny, run(tiny, [(0, 100_000)] * 3)).outcome is Outcome.PASS
    assert judge(tiny, run(tiny, [(1, 1000)] * 30)).outcome is Outcome.FAIL  # 10x
    huge = [(10_000_000, 1_000_000_000), (20_000_000, 1_000_000_000),
            (5_000_000, 1_000_000_000)]
    for events, trials in huge:
        verdict = judge(LIMIT, run(LIMIT, [(events, trials)] * 3))
        assert math.isfinite(verdict.log_e_fail) and math.isfinite(verdict.log_e_pass)
        lo, hi = verdict.interval()
        # The alternatives are 1.25x apart: the interval narrows to about that, no further.
        assert lo <= events / trials <= hi and hi - lo < 0.5 * events / trials
    # A slice is one observation however many requests it holds (it might be one burst):
    # at 2x, each closed slice adds log(1.9) at most, so it takes a dozen slices.
    assert judge(LIMIT, run(LIMIT, [huge[1]] * 3)).outcome is Outcome.INCONCLUSIVE
    assert judge(LIMIT, run(LIMIT, [huge[1]] * 40)).outcome is Outcome.FAIL
    assert judge(LIMIT, run(LIMIT, [huge[2]] * 3)).outcome is Outcome.PASS


def test_high_threshold_latency_limit() -> None:
    p50 = RateLimit(threshold=latency_threshold(0.5), alpha=0.01)
    # A slice can at most double the bet at a threshold of 1/2: 20 s even for all slow.
    assert judge(p50, run(p50, [(10, 10)] * 16)).outcome is Outcome.INCONCLUSIVE
    assert judge(p50, run(p50, [(9, 10)] * 40)).outcome is Outcome.FAIL
    assert judge(p50, run(p50, [(2, 10)] * 10)).outcome is Outcome.PASS
    near = RateLimit(threshold=0.9, alpha=0.01)
    # ... and by 1.11 at 0.9: even all failing takes 70 slices to prove over 90%.
    assert judge(near, run(near, [(10, 10)] * 240)).outcome is Outcome.FAIL


@pytest.mark.parametrize(("quantile", "threshold"), [(0.99, 0.01), (0.9, 0.1), (0.5, 0.5)])
def test_latency_thresholds(quantile: float, threshold: float) -> None:
    assert latency_threshold(quantile) == threshold


@pytest.mark.parametrize("kwargs", [
    {"threshold": 0.0, "alpha": 0.01}, {"threshold": 1.0, "alpha": 0.01},
    {"threshold": -0.1, "alpha": 0.01}, {"threshold": math.nan, "alpha": 0.01},
    {"threshold": 0.01, "alpha": 0.0}, {"threshold": 0.01, "alpha": 0.01, "beta": 1.0},
    {"threshold": 0.01, "alpha": 0.01, "slice_requests": 0},
    {"threshold": 0.01, "alpha": 0.01, "slice_seconds": -1.0},
])
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RateLimit(**kwargs)


def test_threshold_zero_says_what_to_write_instead() -> None:
    with pytest.raises(ValueError, match="small rate such as 0.001"):
        RateLimit(threshold=0.0, alpha=0.01)


@pytest.mark.parametrize(("events", "trials"), [(-1, 10), (11, 10), (True, 10), (1.0, 10)])
def test_bad_counts_are_refused(events: Any, trials: Any) -> None:
    with pytest.raises(ValueError):
        observe(LIMIT, RateState(), events, trials, 1.0)


def test_a_slice_needs_both_its_requests_and_its_seconds() -> None:
    limit = RateLimit(threshold=0.01, alpha=0.01, slice_requests=20, slice_seconds=2.0)
    state = observe(limit, RateState(since=100.0), 0, 50, 101.0)  # enough requests, 1 s
    assert state.slices == 0 and state.open_trials == 50
    state = observe(limit, state, 0, 5, 102.0)
    assert (state.slices, state.open_trials, state.since) == (1, 0, 102.0)
    state = observe(limit, state, 0, 15, 110.0)  # enough time, 15 requests
    assert state.slices == 1 and state.open_trials == 15


# --------------------------------------------------------------------------- serialisation


def test_rate_state_round_trips_through_json() -> None:
    state = run(LIMIT, [(1, 10), (0, 12), (3, 9)] * 7)
    again = RateState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state
    assert judge(LIMIT, again) == judge(LIMIT, state)


def test_ratio_state_round_trips_through_json() -> None:
    limit = RatioLimit(margin=0.5, alpha=0.01)
    state = run_ratio(limit, [(1, 2, 10, 90), (0, 1, 12, 88)] * 40)
    assert state.slices > 0
    again = RatioState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state


@pytest.mark.parametrize(("field", "value"), [
    ("v", 2), ("events", -1), ("events", True), ("events", 1.5), ("trials", None),
    ("log_bets", [0.0]), ("log_bets", [math.nan] * 8), ("since", "now"), ("events", 10**9),
])
def test_unreadable_states_are_refused(field: str, value: Any) -> None:
    data = run(LIMIT, [(1, 10)] * 5).to_json()
    data[field] = value
    with pytest.raises(ValueError):
        RateState.from_json(data)


# --------------------------------------------------------------------------- ratio test


@pytest.mark.parametrize(("canary_errors", "outcome"), [
    (0, Outcome.PASS),  # no canary errors while the baseline has 1%
    (3, Outcome.INCONCLUSIVE),  # 1.5%: exactly the 1.5x the margin allows
    (20, Outcome.FAIL),  # 10x the baseline's rate
], ids=["clean", "at-allowed", "10x"])
def test_ratio_verdicts(canary_errors: int, outcome: Outcome) -> None:
    limit = RatioLimit(margin=0.5, alpha=0.01)
    # Per 20 ticks: canary 200 requests with `canary_errors`, baseline 1800 with 18.
    ticks = [((1 if t % 20 < canary_errors else 0), (1 if t % 10 < 9 else 0), 10, 90)
             for t in range(600)]
    assert judge_ratio(limit, run_ratio(limit, ticks)).outcome is outcome


def test_ratio_without_baseline_traffic_judges_nothing() -> None:
    limit = RatioLimit(margin=0.5, alpha=0.01)
    state = run_ratio(limit, [(5, 0, 10, 0)] * 100)
    verdict = judge_ratio(limit, state)
    assert state.slices == 0 and verdict.outcome is Outcome.INCONCLUSIVE
    assert verdict.estimate is None and verdict.interval() == (0.0, None)


def test_ratio_summary() -> None:
    limit = RatioLimit(margin=0.5, alpha=0.01)
    state = run_ratio(limit, [(2, 1, 10, 90)] * 120)
    verdict = judge_ratio(limit, state)
    assert verdict.outcome is Outcome.FAIL
    assert verdict.estimate == pytest.approx(18.0)
    assert verdict.summary().startswith("error rate vs baseline x18 [")
    assert "> x1.5: e=" in verdict.summary()
    assert json.dumps(verdict.to_dict())


@pytest.mark.parametrize("margin", [-0.1, 101.0, math.nan])
def test_bad_margins_are_refused(margin: float) -> None:
    with pytest.raises(ValueError):
        RatioLimit(margin=margin, alpha=0.01)


# --------------------------------------------------------------------------- arithmetic


def test_log_mean_exp() -> None:
    assert log_mean_exp([0.0, 0.0]) == 0.0
    assert log_mean_exp([-math.inf, -math.inf]) == -math.inf
    assert log_mean_exp([1000.0, 1000.0 + math.log(3)]) == pytest.approx(1000.0 + math.log(2))


@pytest.mark.parametrize(("events", "trials"), [(0, 0), (0, 1), (5, 5), (3, 1000), (1, 10**9)])
def test_bounds_bracket_the_estimate(events: int, trials: int) -> None:
    lo, hi = lower_bound(events, trials, 0.01), upper_bound(events, trials, 0.05)
    assert 0.0 <= lo <= hi <= 1.0
    if trials:
        assert lo <= events / trials <= hi


# --------------------------------------------------------------------------- alpha spending


@pytest.mark.parametrize("planned", [0, 1, 5, 20])
def test_alpha_spending_never_overspends(planned: int) -> None:
    assert total_alpha(0.01, planned, planned + 60, tests=3, replicas=2) <= 0.01
    shares = {step_alpha(0.01, i, planned) for i in range(planned)}
    assert len(shares) <= 1  # planned steps share equally


def test_alpha_spending_divides_by_tests_and_replicas() -> None:
    assert step_alpha(0.01, 0, 5) == pytest.approx(0.01 / 6)
    assert step_alpha(0.01, 0, 5, tests=2, replicas=3) == pytest.approx(0.01 / 36)
    assert step_alpha(0.01, 5, 5) == pytest.approx(0.01 / 12)  # first unplanned restart


@pytest.mark.parametrize("args", [(0.0, 0, 1), (1.0, 0, 1), (0.01, -1, 1), (0.01, 0, -1)])
def test_alpha_spending_refuses_nonsense(args: tuple[float, int, int]) -> None:
    with pytest.raises(ValueError):
        step_alpha(*args)
