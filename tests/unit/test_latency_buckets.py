"""The hot path's latency histogram slot (`stats.bucket_of`): exactly `bisect_left` over the
bucket bounds, Prometheus' `le` semantics (a value equal to a bound counts in that bucket)."""

from __future__ import annotations

import bisect
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitproxy.dataplane.stats import LATENCY_BUCKETS, VersionStats, bucket_of


# Not NaN: a time here is a difference of a monotonic clock (bisect would put NaN first).
@given(st.floats(allow_nan=False, allow_infinity=True))
def test_the_slot_is_bisect_left_over_the_bounds(seconds: float) -> None:
    assert bucket_of(seconds) == bisect.bisect_left(LATENCY_BUCKETS, seconds)


@pytest.mark.parametrize("bound", LATENCY_BUCKETS)
def test_a_value_on_a_bound_counts_in_that_bucket_and_just_above_in_the_next(
        bound: float) -> None:
    i = LATENCY_BUCKETS.index(bound)
    assert bucket_of(bound) == i
    assert bucket_of(math.nextafter(bound, math.inf)) == i + 1


def test_over_ten_seconds_lands_in_the_last_slot() -> None:
    s = VersionStats("shop", "stable")
    s.observe(200, 0.0004)
    s.observe(200, 11.0)
    assert s.latency_counts[0] == 1 and s.latency_counts[-1] == 1
    assert len(s.latency_counts) == len(LATENCY_BUCKETS) + 1
