"""Routing decisions: pin -> cookie -> hash bucket -> weighted sequence, all without sockets."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.routing.choose import (
    BUCKETS,
    MAX_PERIOD,
    RoutePlan,
    bucket,
    choose,
    make_plan,
    pin_values,
    sticky_value,
)

PROPS = settings(max_examples=200, deadline=None)


def plan_of(*weights: int, name: str = "web") -> RoutePlan:
    """A plan whose first version is the baseline, like `table.build_route` makes."""
    versions = ("stable",) + tuple(f"v{i}" for i in range(1, len(weights)))
    return make_plan(name, versions, dict(zip(versions, weights, strict=True)), versions[0])


def window_counts(plan: RoutePlan, version: str, window: int) -> list[int]:
    """How often `version` is picked in every window of `window` consecutive seq values."""
    period = len(plan.schedule)
    hits = [choose(plan, seq, None, None, None) == version for seq in range(period + window)]
    prefix = list(itertools.accumulate(hits, initial=0))
    return [prefix[start + window] - prefix[start] for start in range(period)]


WEIGHT_CASES = [
    (90, 10),
    (10, 90),
    (99, 1),
    (67, 33),
    (999, 1),
    (50, 30, 20),
    (67890, 12345),
    (876543, 123457),  # period above MAX_PERIOD: scaled down
]


# --- weighted sequence --------------------------------------------------------------------------


@pytest.mark.parametrize("weights", WEIGHT_CASES)
def test_any_100_consecutive_requests_are_within_one_of_the_weight(
    weights: tuple[int, ...],
) -> None:
    plan = plan_of(*weights)
    total = sum(weights)
    for version, weight in zip(plan.versions, weights, strict=True):
        expected = 100 * weight / total
        counts = window_counts(plan, version, 100)
        assert min(counts) >= expected - 1 - 1e-9, (version, expected, min(counts))
        assert max(counts) <= expected + 1 + 1e-9, (version, expected, max(counts))


def test_ten_percent_is_exactly_one_in_every_ten() -> None:
    plan = plan_of(90, 10)
    assert len(plan.schedule) == 10
    assert Counter(plan.schedule) == {"stable": 9, "v1": 1}
    assert set(window_counts(plan, "v1", 100)) == {10}


@pytest.mark.parametrize(
    ("weights", "period"),
    [((90, 10), 10), ((999, 1), 1000), ((50, 30, 20), 10), ((67890, 12345), 5349), ((5, 0), 1)],
)
def test_one_period_gives_exactly_the_reduced_weights(
    weights: tuple[int, ...], period: int
) -> None:
    plan = plan_of(*weights)
    assert len(plan.schedule) == period
    counts = Counter(plan.schedule)
    for version, weight in zip(plan.versions, weights, strict=True):
        assert counts[version] * sum(weights) == weight * period


def test_huge_weights_are_scaled_to_a_bounded_period_keeping_tiny_versions_live() -> None:
    plan = plan_of(10**9, 1, 10**9 - 7)
    assert len(plan.schedule) <= MAX_PERIOD + 2
    counts = Counter(plan.schedule)
    assert counts["v1"] >= 1
    assert abs(counts["stable"] - counts["v2"]) <= 1


@PROPS
@given(st.lists(st.integers(0, 500), min_size=2, max_size=4), st.integers(1, 300))
def test_property_sequence_is_smooth_in_any_window(weights: list[int], window: int) -> None:
    total = sum(weights)
    plan = plan_of(*weights)
    if total == 0:
        assert plan.schedule == ()
        return
    counts = Counter(plan.schedule)
    # Two versions stay within one request of the share; more than two within (strictly) two.
    slack = 1.0 if sum(w > 0 for w in weights) <= 2 else 2.0 - 1e-9
    for version, weight in zip(plan.versions, weights, strict=True):
        assert counts[version] * total == weight * len(plan.schedule)
        expected = window * weight / total
        for count in window_counts(plan, version, window):
            assert abs(count - expected) <= slack + 1e-9, (version, expected, count)


# --- weight 0 and pins --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pin", "cookie", "hash_key", "expected"),
    [
        ("v1", None, None, "v1"),  # pin reaches a weight-0 version
        ("v1", "stable", b"user-1", "v1"),  # and beats cookie and hash
        ("stable", "v2", b"user-1", "stable"),
        ("nope", None, None, "v2"),  # unknown pin ignored
        (None, "v1", None, "v2"),  # cookie for weight 0 ignored
        (None, "nope", None, "v2"),
        (None, "v3", None, "v3"),  # cookie for a live version honoured ...
        (None, "v3", b"user-1", "v3"),  # ... even over the hash key
        (None, None, b"user-1", "v2"),
        (None, None, b"", "v2"),  # empty hash key falls through to the sequence
    ],
)
def test_choose_precedence(
    pin: str | None, cookie: str | None, hash_key: bytes | None, expected: str
) -> None:
    # stable 0 / v1 0 / v2 100 / v3 1: seq 0 and the key "user-1" land on v2.
    plan = plan_of(0, 0, 100, 1)
    assert choose(plan, 0, pin, cookie, hash_key) == expected


@pytest.mark.parametrize("weights", [(90, 0), (0, 10), (0, 0, 7)])
def test_weight_zero_gets_no_unpinned_traffic(weights: tuple[int, ...]) -> None:
    plan = plan_of(*weights)
    dead = {v for v, w in zip(plan.versions, weights, strict=True) if w == 0}
    for seq in range(200):
        key = f"user-{seq}".encode()
        assert choose(plan, seq, None, None, None) not in dead
        assert choose(plan, seq, None, None, key) not in dead
        assert choose(plan, seq, None, sorted(dead)[0], key) not in dead


@pytest.mark.parametrize(
    ("pin", "expected"), [(None, None), ("nope", None), ("stable", "stable"), ("v1", "v1")]
)
def test_all_weights_zero_routes_nowhere_unless_pinned(
    pin: str | None, expected: str | None
) -> None:
    plan = plan_of(0, 0)
    assert plan.live == frozenset()
    assert plan.schedule == () and plan.bucket_bounds == ()
    assert choose(plan, 3, pin, "stable", b"user-1") == expected


def test_missing_weights_count_as_zero() -> None:
    plan = make_plan("web", ("stable", "canary"), {"stable": 5}, "stable")
    assert list(plan.weights) == [5, 0]
    assert plan.live == {"stable"}


@pytest.mark.parametrize(
    ("versions", "weights", "baseline"),
    [
        (("a", "b"), {"a": 1}, "c"),  # baseline not a version
        (("a", "b"), {"a": 1, "x": 1}, "a"),  # weight for an unknown version
        (("a", "b"), {"a": -1}, "a"),
        (("a", "a"), {"a": 1}, "a"),
    ],
)
def test_make_plan_rejects_inconsistent_input(
    versions: tuple[str, ...], weights: dict[str, int], baseline: str
) -> None:
    with pytest.raises(ValueError):
        make_plan("web", versions, weights, baseline)


# --- hash buckets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "key", "expected"),
    [
        ("web", b"user-1", 2917),
        ("web", b"user-2", 1),
        ("api", b"user-1", 5118),
        ("web", b"", 4510),
        ("web", b"\x00\xff", 5490),
    ],
)
def test_bucket_is_a_fixed_function(route: str, key: bytes, expected: int) -> None:
    # Hard-coded: changing the hash would move users between versions on upgrade.
    assert bucket(route, key) == expected


@PROPS
@given(st.text(max_size=20), st.binary(max_size=64))
def test_property_bucket_is_in_range(route: str, key: bytes) -> None:
    assert 0 <= bucket(route, key) < BUCKETS


@pytest.mark.parametrize(
    ("weights", "bounds"),
    [
        ((90, 10), ((1000, "v1"), (10000, "stable"))),
        ((999, 1), ((10, "v1"), (10000, "stable"))),
        ((50, 30, 20), ((3000, "v1"), (5000, "v2"), (10000, "stable"))),
        ((50, 0, 20), ((2857, "v2"), (10000, "stable"))),
        ((0, 10), ((10000, "v1"),)),
    ],
)
def test_canaries_own_the_lowest_buckets_in_config_order(
    weights: tuple[int, ...], bounds: tuple[tuple[int, str], ...]
) -> None:
    assert plan_of(*weights).bucket_bounds == bounds


def test_same_key_same_version_whatever_the_seq() -> None:
    plan = plan_of(50, 30, 20)
    for n in range(50):
        key = f"user-{n}".encode()
        assert len({choose(plan, seq, None, None, key) for seq in range(20)}) == 1


def test_hash_choice_follows_the_bucket() -> None:
    plan = plan_of(90, 10)
    for n in range(500):
        key = f"user-{n}".encode()
        expected = "v1" if bucket("web", key) < 1000 else "stable"
        assert choose(plan, 0, None, None, key) == expected


@pytest.mark.parametrize("weights", [(90, 10), (50, 50), (999, 1), (50, 30, 20), (25, 25, 25, 25)])
def test_hash_share_of_many_keys_matches_the_weights(weights: tuple[int, ...]) -> None:
    rng = random.Random(1234)
    plan = plan_of(*weights)
    n = 10_000
    counts = Counter(choose(plan, 0, None, None, rng.randbytes(16)) for _ in range(n))
    for version, weight in zip(plan.versions, weights, strict=True):
        assert abs(counts[version] / n - weight / sum(weights)) < 0.02, (version, counts)


@PROPS
@given(st.binary(min_size=1, max_size=32), st.integers(0, 100), st.integers(0, 100))
def test_property_raising_the_canary_only_adds_users(key: bytes, a: int, b: int) -> None:
    low, high = sorted((a, b))
    # Percent-style: the baseline gets the rest.
    if choose(plan_of(100 - low, low), 0, None, None, key) == "v1":
        assert choose(plan_of(100 - high, high), 0, None, None, key) == "v1"
    # Baseline weight fixed, canary weight raised.
    if high > 0 and choose(plan_of(37, low), 0, None, None, key) == "v1":
        assert choose(plan_of(37, high), 0, None, None, key) == "v1"


@PROPS
@given(st.binary(min_size=1, max_size=32), st.integers(1, 1000))
def test_property_a_user_flips_at_most_once_as_the_canary_sweeps_up(
    key: bytes, baseline: int
) -> None:
    # Walking the canary 0 -> 100 and back is a rollout advancing or being rolled back: a user
    # may move to the canary once (and back once), never oscillate.
    picks = [choose(plan_of(baseline, w), 0, None, None, key) for w in range(0, 101, 5)]
    flips = sum(a != b for a, b in itertools.pairwise(picks))
    assert flips <= 1
    assert picks == sorted(picks, key=lambda v: v == "v1")


@PROPS
@given(
    st.binary(min_size=1, max_size=32),
    st.lists(st.integers(0, 100), min_size=3, max_size=5).filter(lambda ws: sum(ws) > 0),
)
def test_property_n_way_split_picks_the_live_version_owning_the_bucket(
    key: bytes, weights: list[int]
) -> None:
    plan = plan_of(*weights)
    chosen = choose(plan, 0, None, None, key)
    assert chosen in plan.live
    b = bucket("web", key)
    lower = 0
    for upper, version in plan.bucket_bounds:
        if lower <= b < upper:
            assert chosen == version
            break
        lower = upper
    sizes = Counter[str]()
    lower = 0
    for upper, version in plan.bucket_bounds:
        sizes[version] = upper - lower
        lower = upper
    for version, weight in zip(plan.versions, weights, strict=True):
        assert abs(sizes[version] - weight * BUCKETS / sum(weights)) <= 1


def test_a_sticky_cookie_names_the_version_and_the_run() -> None:
    assert sticky_value("canary", "3f9a1c2b") == "canary.3f9a1c2b"
    # Version names may hold dots: the run is what follows the last one.
    assert sticky_value("v1.2", "r").rpartition(".") == ("v1.2", ".", "r")


def test_pin_values_without_a_token_are_the_version_names() -> None:
    assert pin_values(("stable", "canary"), None) == {b"stable": "stable", b"canary": "canary"}


def test_pin_values_with_a_token_need_it_after_a_colon() -> None:
    pins = pin_values(("stable", "canary"), "s3cret-s3cret-s3cret")
    assert pins == {b"stable:s3cret-s3cret-s3cret": "stable",
                    b"canary:s3cret-s3cret-s3cret": "canary"}
    assert pins.get(b"canary") is None
