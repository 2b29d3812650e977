"""Sliding windows over cumulative counters: deltas, span, quantiles, horizon trimming.

Pure: the clock is a plain float passed in, no sockets, no event loop.
"""

from __future__ import annotations

import pytest

from splitproxy.control.window import Key, Sample, Window
from splitproxy.dataplane.stats import LATENCY_BUCKETS, VersionStats

SHOP: Key = ("shop", "canary", False)
STABLE: Key = ("shop", "stable", False)
SYNTH: Key = ("shop", "canary", True)


def sample(requests: int, errors: int = 0, seconds: float = 0.003) -> Sample:
    """Cumulative counts: `requests` answers (`errors` of them 500s), all `seconds` long."""
    stats = VersionStats("shop", "canary")
    for i in range(requests):
        stats.observe(500 if i < errors else 200, seconds)
    return Sample.of(stats)


def spread(*per_bucket: tuple[float, int]) -> Sample:
    """A sample with `n` requests of latency `seconds` for each (seconds, n)."""
    stats = VersionStats("shop", "canary")
    for seconds, n in per_bucket:
        for _ in range(n):
            stats.observe(200, seconds)
    return Sample.of(stats)


def counted(window: Window, now: float, seconds: float) -> dict[Key, int]:
    return {k: s.requests for k, s in window.delta(now, seconds).items()}


# --------------------------------------------------------------------------- Sample


def test_sample_of_counts_5xx_as_errors_and_everything_as_requests() -> None:
    stats = VersionStats("shop", "canary")
    for code in (200, 204, 302, 404, 499, 500, 502, 503, 504):
        stats.observe(code, 0.01)
    s = Sample.of(stats)
    assert (s.requests, s.errors, sum(s.latency)) == (9, 4, 9)


def test_sample_arithmetic_is_per_field() -> None:
    a, b = sample(10, 3), sample(4, 1)
    assert (a - b).requests == 6 and (a - b).errors == 2
    assert (a + b).requests == 14 and (a + b).errors == 4
    assert sum((a - b).latency) == 6


@pytest.mark.parametrize(
    ("requests", "errors", "rate"),
    [(0, 0, None), (10, 0, 0.0), (10, 1, 0.1), (4, 4, 1.0)],
)
def test_error_rate(requests: int, errors: int, rate: float | None) -> None:
    assert sample(requests, errors).error_rate == rate


def test_quantile_without_requests_is_none() -> None:
    assert Sample().quantile(0.99) is None


@pytest.mark.parametrize(
    ("s", "q", "expected"),
    [
        # 100 requests in (0.1, 0.25]: linear inside the bucket, as histogram_quantile.
        (spread((0.2, 100)), 0.50, 0.1 + 0.15 * 0.50),
        (spread((0.2, 100)), 0.90, 0.1 + 0.15 * 0.90),
        (spread((0.2, 100)), 0.99, 0.1 + 0.15 * 0.99),
        # All in the first bucket: its lower bound is 0.
        (spread((0.0005, 10)), 0.5, 0.001 * 0.5),
        # 90 fast (0.0025, 0.005] and 10 slow (0.5, 1.0]: p50 is fast, p99 is slow.
        (spread((0.004, 90), (0.9, 10)), 0.50, 0.0025 + 0.0025 * 50 / 90),
        (spread((0.004, 90), (0.9, 10)), 0.90, 0.005),  # exactly the top of the fast bucket
        (spread((0.004, 90), (0.9, 10)), 0.99, 0.5 + 0.5 * 9 / 10),
        # Above the last bound (10 s) there is no upper edge: the last bound is reported.
        (spread((30.0, 10)), 0.99, LATENCY_BUCKETS[-1]),
    ],
)
def test_quantile_interpolates_inside_the_bucket(s: Sample, q: float, expected: float) -> None:
    assert s.quantile(q) == pytest.approx(expected)


# --------------------------------------------------------------------------- Window.delta


def test_empty_window_has_no_delta_and_no_span() -> None:
    w = Window(horizon=60)
    assert (w.delta(100.0, 10), w.span(100.0, 10)) == ({}, 0.0)


def window_of(counts: dict[float, int], horizon: float = 60) -> Window:
    """Canary requests, cumulative, recorded at the given times."""
    w = Window(horizon)
    for t, n in counts.items():
        w.record(t, {SHOP: sample(n)})
    return w


STEADY = {float(t): 10 * t for t in range(0, 11)}  # 10 requests a second, t = 0..10


@pytest.mark.parametrize(
    ("now", "seconds", "requests", "span"),
    [
        (10.0, 5, 50, 5.0),  # newest (t=10) minus the sample at t=5
        (10.0, 1, 10, 1.0),
        (10.0, 10, 100, 10.0),
        (10.0, 60, 100, 10.0),  # history shorter than asked: from the oldest sample
        (10.0, 2.5, 30, 3.0),  # no sample at 7.5: the newest one older than that (t=7)
        (10.0, 0, 0, 0.0),
        (10.5, 5, 50, 5.0),  # between samples: newest minus the newest at <= 5.5 (t=5)
    ],
)
def test_delta_is_newest_minus_newest_sample_old_enough(
    now: float, seconds: float, requests: int, span: float
) -> None:
    w = window_of(STEADY)
    assert counted(w, now, seconds) == {SHOP: requests}
    assert w.span(now, seconds) == span


def test_delta_of_a_version_first_seen_inside_the_window_counts_from_zero() -> None:
    w = Window(60)
    w.record(0.0, {STABLE: sample(100)})
    w.record(1.0, {STABLE: sample(110), SHOP: sample(7)})
    assert counted(w, 1.0, 1) == {STABLE: 10, SHOP: 7}


def test_delta_keeps_versions_apart_and_synthetic_apart() -> None:
    w = Window(60)
    w.record(0.0, {SHOP: sample(0), SYNTH: sample(0)})
    w.record(1.0, {SHOP: sample(5, 1), SYNTH: sample(20, 20)})
    delta = w.delta(1.0, 1)
    assert (delta[SHOP].requests, delta[SHOP].errors) == (5, 1)
    assert (delta[SYNTH].requests, delta[SYNTH].errors) == (20, 20)


def test_delta_of_errors_and_latency_is_the_window_s_own() -> None:
    w = Window(60)
    w.record(0.0, {SHOP: spread((0.004, 1000))})  # a long fast history ...
    slow = spread((0.004, 1000), (0.9, 100))  # ... then 100 slow answers in the last second
    w.record(1.0, {SHOP: slow})
    assert w.delta(1.0, 1)[SHOP].quantile(0.5) == pytest.approx(0.5 + 0.5 * 0.5)


# --------------------------------------------------------------------------- horizon


def test_record_trims_to_the_horizon_but_keeps_one_sample_at_or_before_it() -> None:
    w = window_of(STEADY, horizon=5)
    # Samples before t=5 are gone: a longer question is answered over 5 s only.
    assert counted(w, 10.0, 60) == {SHOP: 50}
    assert w.span(10.0, 60) == 5.0
    # A full horizon still has a start.
    assert counted(w, 10.0, 5) == {SHOP: 50}


def test_trimming_keeps_a_start_for_a_window_between_samples() -> None:
    w = Window(horizon=5)
    for t, n in ((0.0, 0), (3.0, 30), (6.0, 60), (9.0, 90)):
        w.record(t, {SHOP: sample(n)})
    # The 5 s window at t=9 starts at 4: the newest sample at or before it (t=3) must be kept.
    assert counted(w, 9.0, 5) == {SHOP: 60}
    assert w.span(9.0, 5) == 6.0


def test_horizon_can_grow_on_reload() -> None:
    w = Window(horizon=2)
    w.horizon = 100
    for t, n in STEADY.items():
        w.record(t, {SHOP: sample(n)})
    assert counted(w, 10.0, 60) == {SHOP: 100}


def test_two_samples_are_always_kept() -> None:
    w = Window(horizon=1)
    w.record(0.0, {SHOP: sample(0)})
    w.record(100.0, {SHOP: sample(40)})
    assert counted(w, 100.0, 1) == {SHOP: 40}
