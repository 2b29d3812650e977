"""The gauge test (`rollout.gauges`): a sign test on block means, one pure call each.

Blocks close on time and reading counts only; each closed block is one sign; the fail side
needs a known number of blocks over the limit; ties count for neither side."""

from __future__ import annotations

import math

import pytest

from splitproxy.config.metrics import Direction
from splitproxy.rollout.gauges import (
    SIGN_BETS,
    GaugeLimit,
    GaugeState,
    judge_gauge,
    observe_gauge,
)
from splitproxy.rollout.verdicts import Outcome

ALPHA = 0.01 / 6
BELOW, ABOVE = Direction.BELOW, Direction.ABOVE


def blocks_to(goal: float, wins: int = 0) -> int:
    """How many consecutive winning blocks the bet mixture needs to reach `goal` (a level)."""
    k = 0
    while True:
        k += 1
        log_e = math.log(sum((1 + b) ** k for b in SIGN_BETS) / len(SIGN_BETS))
        if log_e >= -math.log(goal):
            return k


def feed(limit: GaugeLimit, values: list[float], base: list[float] | None = None,
         start: float = 0.0, every: float = 1.0) -> GaugeState:
    state = GaugeState(since=start)
    for i, v in enumerate(values):
        b = base[i] if base is not None else None
        state = observe_gauge(limit, state, v, b, start + (i + 1) * every)
    return state


def test_blocks_close_on_time_and_readings_only_and_average_their_values() -> None:
    limit = GaugeLimit(0.8, BELOW, ALPHA, block_seconds=10.0, min_readings=3)
    state = feed(limit, [0.5] * 9)
    assert (state.blocks, state.readings) == (0, 9)  # 9 s: not yet
    state = observe_gauge(limit, state, 1.4, None, 10.0)  # 10 readings, 10 s: closes
    assert (state.blocks, state.readings, state.since) == (1, 0, 10.0)
    assert state.last == pytest.approx((0.5 * 9 + 1.4) / 10)
    assert (state.worse, state.better) == (0, 1)  # its mean, 0.59, is under 0.8
    # Two readings in 30 s are not a block (min_readings), whatever the time.
    sparse = feed(limit, [0.9, 0.9], every=15.0)
    assert sparse.blocks == 0
    assert observe_gauge(limit, sparse, 0.9, None, 45.0).blocks == 1


def test_a_gauge_over_its_limit_in_every_block_fails_after_the_blocks_the_bets_need() -> None:
    need = blocks_to(ALPHA)
    assert need == 13  # (ln 600 + ln 6) / ln 1.9: the README's figure
    limit = GaugeLimit(0.8, BELOW, ALPHA, block_seconds=10.0)
    state = feed(limit, [0.85] * (10 * (need - 1)))
    assert judge_gauge(limit, state).outcome is Outcome.INCONCLUSIVE
    state = feed(limit, [0.85] * (10 * need))
    verdict = judge_gauge(limit, state)
    assert verdict.outcome is Outcome.FAIL
    assert (verdict.blocks, verdict.worse, verdict.better) == (need, need, 0)
    assert verdict.summary("canary cpu").startswith(
        f"canary cpu 0.85 ({need} of {need} blocks above) > 0.8: e=")
    assert verdict.to_dict()["fail_at"] == pytest.approx(600)


def test_a_gauge_under_its_limit_passes_and_one_over_now_and_then_only_slows_it() -> None:
    limit = GaugeLimit(0.8, BELOW, ALPHA, beta=0.05, block_seconds=1.0, min_readings=1)
    clean = judge_gauge(limit, feed(limit, [0.3] * blocks_to(0.05)))
    assert clean.outcome is Outcome.PASS
    mixed = [0.3, 0.3, 0.9] * 6  # a third of the blocks over: neither side decides soon
    verdict = judge_gauge(limit, feed(limit, mixed))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert (verdict.worse, verdict.better) == (6, 12)


def test_direction_above_judges_a_floor_and_ties_count_for_neither_side() -> None:
    limit = GaugeLimit(0.99, ABOVE, ALPHA, block_seconds=1.0, min_readings=1)
    low = judge_gauge(limit, feed(limit, [0.95] * 13))
    assert low.outcome is Outcome.FAIL
    assert "(13 of 13 blocks below) < 0.99: e=" in low.summary("canary success")
    tied = feed(limit, [0.99] * 40)
    assert (tied.blocks, tied.worse, tied.better) == (40, 0, 0)
    assert judge_gauge(limit, tied).outcome is Outcome.INCONCLUSIVE


def test_against_the_baseline_each_block_is_held_to_the_baselines_mean_plus_margin() -> None:
    limit = GaugeLimit(0.2, BELOW, ALPHA, block_seconds=1.0, paired=True, min_readings=1)
    # The load moves both; the canary stays at 1.1x the baseline: within x1.2.
    base = [1.0 + (i % 7) for i in range(20)]
    ok = feed(limit, [1.1 * b for b in base], base)
    assert (ok.worse, ok.better) == (0, 20)
    bad = feed(limit, [1.3 * b for b in base], base)
    verdict = judge_gauge(limit, bad)
    assert verdict.outcome is Outcome.FAIL
    assert verdict.summary("canary cpu").startswith(
        "canary cpu 5 vs baseline 3.85 (20 of 20 blocks above) > x1.2 the baseline's: e=")
    # A reading without the baseline's is no paired reading.
    assert observe_gauge(limit, GaugeState(), 1.0, None, 5.0) == GaugeState()


def test_a_non_finite_value_adds_nothing() -> None:
    limit = GaugeLimit(0.8, BELOW, ALPHA, block_seconds=0.0, min_readings=1)
    for value in (math.nan, math.inf, -math.inf):
        assert observe_gauge(limit, GaugeState(), value, None, 1.0) == GaugeState()


def test_state_round_trips_through_json_and_refuses_anything_else() -> None:
    limit = GaugeLimit(0.8, BELOW, ALPHA, block_seconds=1.0, min_readings=1)
    state = feed(limit, [0.9, 0.7, 0.85, 0.2, 0.95])
    assert GaugeState.from_json(state.to_json()) == state
    for bad in ({**state.to_json(), "worse": -1}, {**state.to_json(), "log_bets": [0.0]},
                {**state.to_json(), "worse": 9}, {**state.to_json(), "v": 7}):
        with pytest.raises(ValueError):
            GaugeState.from_json(bad)


def test_limits_refuse_what_cannot_be_judged() -> None:
    with pytest.raises(ValueError):
        GaugeLimit(0.8, BELOW, 0.0)
    with pytest.raises(ValueError):
        GaugeLimit(math.nan, BELOW, ALPHA)
    with pytest.raises(ValueError):
        GaugeLimit(-0.1, BELOW, ALPHA, paired=True)
