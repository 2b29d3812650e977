"""loadtests/analysis.py: the statistics that decide whether a scenario passes.

Named apart from tests/unit/test_analysis.py (splitproxy's own analysis): test modules outside
packages must have unique basenames.
"""

from __future__ import annotations

import math
import random

import pytest

from loadtests.analysis import (
    ANON,
    COOKIE,
    PINNED,
    USER,
    Epoch,
    Sample,
    assignments,
    backward_moves,
    chi2_sf,
    chi_square,
    errors_by_version,
    revert_timing,
    share_report,
    sticky_violations,
    timeseries,
    wilson_interval,
)


def sample(t: float, version: str | None, user: str = "u1", kind: str = USER,
           status: int = 200, latency_ms: float = 1.0) -> Sample:
    return Sample(t, latency_ms, status, version, user, kind)


# --- Wilson interval ----------------------------------------------------------------------------

def test_wilson_interval_matches_a_published_value() -> None:
    # 10 of 100: the textbook example (Newcombe 1998, and most calculators): 0.0552 to 0.1744.
    assert wilson_interval(10, 100) == pytest.approx((0.0552, 0.1744), abs=5e-5)


@pytest.mark.parametrize(("k", "n"), [(10, 100), (50, 100), (900, 1000), (1, 20), (3, 7)])
def test_wilson_bounds_are_where_the_score_test_is_exactly_z(k: int, n: int) -> None:
    # The Wilson interval is {p : |k/n - p| <= z * sqrt(p (1 - p) / n)}; its bounds solve it
    # with equality.
    z = 1.959963984540054
    for p in wilson_interval(k, n):
        assert abs(k / n - p) == pytest.approx(z * math.sqrt(p * (1 - p) / n), rel=1e-9)


def test_wilson_interval_is_exact_at_the_edges_and_wide_without_data() -> None:
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_wilson_interval_covers_the_true_share_about_95_percent_of_the_time() -> None:
    rng = random.Random(7)
    trials, covered = 2000, 0
    for _ in range(trials):
        k = sum(rng.random() < 0.1 for _ in range(400))
        lo, hi = wilson_interval(k, 400)
        covered += lo <= 0.1 <= hi
    assert 0.93 <= covered / trials <= 0.97


# --- chi-square -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("statistic", "dof", "p"),
    [
        # Critical values from the chi-square table at alpha 0.05, 0.01 and 0.001.
        (3.841459, 1, 0.05), (6.634897, 1, 0.01), (10.827566, 1, 0.001),
        (5.991465, 2, 0.05), (9.210340, 2, 0.01), (13.815511, 2, 0.001),
        (7.814728, 3, 0.05), (11.344867, 3, 0.01), (16.266236, 3, 0.001),
        (9.487729, 4, 0.05), (13.276704, 4, 0.01), (18.466827, 4, 0.001),
        (11.070498, 5, 0.05), (15.086272, 5, 0.01), (20.515006, 5, 0.001),
    ],
)
def test_chi2_survival_function_matches_the_critical_value_table(
    statistic: float, dof: int, p: float
) -> None:
    assert chi2_sf(statistic, dof) == pytest.approx(p, rel=1e-5)


def test_chi2_survival_function_limits() -> None:
    assert chi2_sf(0.0, 1) == 1.0
    assert chi2_sf(math.inf, 3) == 0.0
    assert chi2_sf(1000.0, 1) < 1e-200
    # dof 2 has a closed form: exp(-x / 2).
    for x in (0.1, 1.0, 4.0, 30.0):
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-12)


def test_chi_square_accepts_a_fair_split_and_rejects_a_skewed_one() -> None:
    fair = chi_square({"stable": 905, "canary": 95}, {"stable": 90, "canary": 10})
    assert fair.dof == 1 and fair.n == 1000
    assert fair.statistic == pytest.approx(25 / 900 + 25 / 100)
    assert fair.p_value > 0.5
    skewed = chi_square({"stable": 850, "canary": 150}, {"stable": 90, "canary": 10})
    assert skewed.p_value < 1e-6


def test_chi_square_any_answer_from_a_zero_weight_version_fails() -> None:
    result = chi_square({"blue": 999, "green": 1}, {"blue": 100, "green": 0})
    assert math.isinf(result.statistic) and result.p_value == 0.0
    alone = chi_square({"blue": 1000}, {"blue": 100, "green": 0})
    assert alone.p_value == 1.0 and alone.dof == 0


def test_chi_square_counts_an_unknown_version_as_a_failure() -> None:
    assert chi_square({"stable": 10, "rogue": 1}, {"stable": 1, "canary": 1}).p_value == 0.0


def test_share_report_says_whether_the_configured_share_is_inside_the_interval() -> None:
    report = share_report({"stable": 880, "canary": 120}, {"stable": 90, "canary": 10})
    assert report["canary"]["share"] == pytest.approx(0.12)
    assert report["canary"]["configured"] == pytest.approx(0.10)
    assert report["canary"]["within"] is False  # 10% is below [0.101, 0.142]
    assert report["stable"]["within"] is False


# --- assignments: the unit of the share tests -----------------------------------------------------

def test_a_sticky_user_counts_once_however_many_requests_it_makes() -> None:
    epoch = Epoch(0.0, 10.0, {"stable": 90, "canary": 10})
    samples = [sample(t, "canary", "u1") for t in range(5)]
    samples += [sample(t + 0.5, "stable", "u2") for t in range(5)]
    samples += [sample(1.0, "stable", "a1", ANON), sample(2.0, "stable", "a1", ANON)]
    samples += [sample(3.0, "canary", "p1", PINNED)]  # testers are not part of the split
    assert assignments(samples, epoch, cookie_sticky=True) == {"canary": 1, "stable": 3}


def test_with_a_cookie_only_sessions_that_started_in_the_epoch_count() -> None:
    later = Epoch(10.0, 20.0, {"stable": 70, "canary": 30})
    samples = [sample(5.0, "stable", "old"), sample(12.0, "stable", "old"),
               sample(13.0, "canary", "new"), sample(14.0, "canary", "new")]
    assert assignments(samples, later, cookie_sticky=True) == {"canary": 1}
    # Without a cookie the returning user is routed by the new weights: it counts again.
    assert assignments(samples, later, cookie_sticky=False) == {"stable": 1, "canary": 1}


def test_cookie_sessions_count_their_first_answer_when_the_cookie_sticks() -> None:
    epoch = Epoch(0.0, 10.0, {"stable": 1, "canary": 1})
    samples = [sample(1.0, "canary", "c1", COOKIE), sample(2.0, "canary", "c1", COOKIE)]
    assert assignments(samples, epoch, cookie_sticky=True) == {"canary": 1}
    assert assignments(samples, epoch, cookie_sticky=False) == {"canary": 2}


# --- stickiness and direction of travel -----------------------------------------------------------

def test_a_user_that_changes_version_inside_an_epoch_is_a_violation() -> None:
    epochs = [Epoch(0.0, 10.0, {"stable": 90, "canary": 10}),
              Epoch(10.0, 20.0, {"stable": 70, "canary": 30})]
    samples = [
        sample(1.0, "stable", "flip"), sample(2.0, "canary", "flip"),  # violation
        sample(3.0, "stable", "moved"), sample(12.0, "canary", "moved"),  # across epochs: fine
        sample(4.0, "stable", "steady"), sample(5.0, "stable", "steady"),
        sample(6.0, "stable", "pin", PINNED), sample(7.0, "canary", "pin", PINNED),
        sample(8.0, "canary", "err", status=502), sample(8.5, None, "err", status=502),
    ]
    assert sticky_violations(samples, epochs) == [
        {"user": "flip", "epoch": 0, "versions": ["canary", "stable"]}
    ]


def test_moving_back_from_canary_to_stable_is_reported() -> None:
    samples = [
        sample(1.0, "stable", "fwd"), sample(11.0, "canary", "fwd"),
        sample(1.0, "canary", "back"), sample(11.0, "stable", "back"),
        sample(1.0, "canary", "stay"), sample(11.0, "canary", "stay"),
    ]
    backward, forward = backward_moves(samples, ("stable", "canary"))
    assert [b["user"] for b in backward] == ["back"]
    assert forward == 1


# --- errors, revert, time series ------------------------------------------------------------------

def test_errors_by_version_counts_5xx_and_missing_answers() -> None:
    samples = [sample(1.0, "canary", status=500), sample(2.0, "canary"),
               sample(3.0, None, status=0), sample(4.0, "stable", status=404)]
    assert errors_by_version(samples) == {
        "(proxy)": {"requests": 1, "errors": 1, "not_ok": 1},
        "canary": {"requests": 2, "errors": 1, "not_ok": 1},
        "stable": {"requests": 1, "errors": 0, "not_ok": 1},
    }


def test_revert_timing_runs_from_the_first_canary_error_to_the_last_canary_answer() -> None:
    samples = [
        sample(10.0, "canary", "u1"),
        sample(15.2, "canary", "u1", status=500, latency_ms=100),  # first error, seen at 15.3
        sample(16.5, "canary", "u2", status=500, latency_ms=100),  # last canary, seen at 16.6
        sample(17.0, "stable", "u1"),
        sample(18.0, "canary", "t1", PINNED, status=500),  # a tester: left out
    ]
    got = revert_timing(samples, "canary", abort_time=16.55)
    assert got["time_to_revert_s"] == pytest.approx(1.3)
    assert got["canary_errors_seen"] == 2 and got["users_who_saw_canary_errors"] == 2
    assert got["canary_responses_after_abort"] == 0
    late = revert_timing([*samples, sample(17.5, "canary", "u3")], "canary", abort_time=16.55)
    assert late["canary_responses_after_abort"] == 1


def test_revert_timing_counts_slow_answers_as_errors_when_asked() -> None:
    samples = [sample(1.0, "canary", latency_ms=50), sample(2.0, "canary", latency_ms=900),
               sample(3.0, "canary", latency_ms=850)]
    got = revert_timing(samples, "canary", abort_time=None, slow_ms=400)
    assert got["first_canary_error"] == pytest.approx(2.9)
    assert got["time_to_revert_s"] == pytest.approx(0.95)
    assert got["canary_responses_after_abort"] == 0


def test_timeseries_bins_requests_and_errors_per_version() -> None:
    samples = [sample(0.1, "stable"), sample(0.2, "canary", status=500),
               sample(1.5, "canary"), sample(1.6, "canary", kind=PINNED)]
    series = timeseries(samples, 0.0, 2.0)
    assert series["stable"]["rps"] == [1.0, 0.0]
    assert series["canary"]["rps"] == [1.0, 1.0]
    assert series["canary"]["error_rate"] == [1.0, 0.0]
    assert series["canary (pinned)"]["rps"] == [0.0, 1.0]
    assert math.isnan(series["stable"]["error_rate"][1])


def test_samples_survive_a_json_round_trip() -> None:
    s = Sample(1.23456, 2.5, 200, "canary", "u-1", USER, "canary-1")
    assert Sample.from_row(s.to_row()) == Sample(1.2346, 2.5, 200, "canary", "u-1", USER,
                                                 "canary-1")
