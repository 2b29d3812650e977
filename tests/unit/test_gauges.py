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


def fail_e(signs: list[bool]) -> float:
    """The fail side's e-value after these blocks (True: over the limit), summed explicitly:
    the mean over bets of sum_k w_k * prod_{i >= k} (1 +- b), w_k = 1/((k+1)(k+2)), plus
    the weight of the starts still to come, 1/(n+1)."""
    n = len(signs)
    total = 0.0
    for b in SIGN_BETS:
        for k in range(n):
            prod = math.prod((1 + b) if w else (1 - b) for w in signs[k:])
            total += prod / ((k + 1) * (k + 2))
    return total / len(SIGN_BETS) + 1 / (n + 1)


def blocks_to(level: float, before: int = 0) -> int:
    """Blocks over the limit the fail side needs after `before` good ones."""
    k = 0
    while fail_e([False] * before + [True] * k) < 1 / level:
        k += 1
    return k


def pass_blocks(level: float) -> int:
    """Blocks under the limit the pass side (a plain product) needs."""
    k = 0
    while sum((1 + b) ** k for b in SIGN_BETS) / len(SIGN_BETS) < 1 / level:
        k += 1
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
    assert need == 14  # (ln 600 + ln 6 + ln 2) / ln 1.9, about: the README's figure
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


def test_the_fail_side_is_the_explicit_mixture_over_start_blocks() -> None:
    limit = GaugeLimit(0.8, BELOW, ALPHA, block_seconds=1.0, min_readings=1)
    signs = [False, True, True, False, False, True, False, True, True, True, True, False]
    state = feed(limit, [0.9 if w else 0.7 for w in signs])
    assert judge_gauge(limit, state).log_e_fail == pytest.approx(math.log(fail_e(signs)))


def test_a_gauge_that_goes_bad_late_is_not_held_back_by_its_good_blocks() -> None:
    # After 10 good blocks: 20 bad ones, where the bets' product over all blocks would need
    # 36 (its bet 0.9 lost a factor 10 per good block, its bet 0.5 a factor 2).
    late = blocks_to(ALPHA, before=10)
    assert late == 20
    product = sum((1 - b) ** 10 * (1 + b) ** 36 for b in SIGN_BETS) / len(SIGN_BETS)
    assert product >= 1 / ALPHA > sum((1 - b) ** 10 * (1 + b) ** 35 for b in SIGN_BETS) / 6
    limit = GaugeLimit(0.8, BELOW, ALPHA, block_seconds=1.0, min_readings=1)
    state = feed(limit, [0.5] * 10 + [0.9] * late)
    assert judge_gauge(limit, state).outcome is Outcome.FAIL
    assert judge_gauge(limit, feed(limit, [0.5] * 10 + [0.9] * (late - 1))).outcome \
        is Outcome.INCONCLUSIVE


def test_a_gauge_under_its_limit_passes_and_one_over_now_and_then_only_slows_it() -> None:
    limit = GaugeLimit(0.8, BELOW, ALPHA, beta=0.05, block_seconds=1.0, min_readings=1)
    clean = judge_gauge(limit, feed(limit, [0.3] * pass_blocks(0.05)))
    assert clean.outcome is Outcome.PASS
    mixed = [0.3, 0.3, 0.9] * 6  # a third of the blocks over: neither side decides soon
    verdict = judge_gauge(limit, feed(limit, mixed))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert (verdict.worse, verdict.better) == (6, 12)


def test_direction_above_judges_a_floor_and_ties_count_for_neither_side() -> None:
    limit = GaugeLimit(0.99, ABOVE, ALPHA, block_seconds=1.0, min_readings=1)
    low = judge_gauge(limit, feed(limit, [0.95] * 14))
    assert low.outcome is Outcome.FAIL
    assert "(14 of 14 blocks below) < 0.99: e=" in low.summary("canary success")
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
