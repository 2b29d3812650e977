"""E-values on counts: the arithmetic behind the guard's verdicts (see `sequential`).

Two kinds of test supermartingale, both from Ville's inequality: a non-negative
supermartingale that starts at 1 reaches 1/a with probability at most a, however often it is
looked at.

* **Binomial mixtures** on cumulative counts (S events in n trials) against a rate q, with
  alternatives spaced as odds ratios r (p_r = r*q / (1 - q + r*q)):
      log LR_r(q) = S*log(r) - n*log1p((r - 1)*q)
  Ratios above 1 test "rate <= q" (fail side), ratios below 1 test "rate >= q" (pass side).
  Odds ratios keep every alternative inside (0, 1) for any q, and make each LR monotone in q,
  so the set of q a mixture has not rejected is an interval: the confidence sequence we show.
  This is Wald's SPRT mixed over alternatives; valid when trials are independent given the
  rate (the rate may change over time as long as it stays on the null's side).
* **Bets on slices** (Waudby-Smith & Ramdas' betting martingales): each slice of traffic has
  x = S / (n*q), whose mean is <= 1 under "rate <= q" *whatever the dependence between the
  requests of that slice*; the factor 1 + b*(x - 1), 0 <= b < 1, then has mean <= 1. A burst
  inside one slice moves the product by at most a factor (1 + b*(1/q - 1)), where the
  binomial LR would multiply by r^burst. This is what makes the fail side burst-robust.

All values are natural logs, finite, and safe for n up to 1e12 and q from 1e-6 to 1 - 1e-6.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

# Odds ratios of the fail side's binomial alternatives (used for the interval's lower end and
# as the unrobust test the simulation compares against). Dense near 1 for slow regressions,
# sparse far out: a canary at 100x costs at most ln(9) nats more than an oracle would need.
FAIL_RATIOS: tuple[float, ...] = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)
# Pass side: "the rate is below q". 0.01 stands in for "no events at all".
PASS_RATIOS: tuple[float, ...] = (0.8, 0.6, 0.4, 0.2, 0.1, 0.01)
# Bets of the burst-robust fail test, one per growth-optimal point: about 0.03 for a canary
# at 1.25x with few events per slice, 0.9 for a canary that fails most requests.
FAIL_BETS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)

_LOGIT_RANGE = 30.0  # bisection over logit(q) in [-30, 30]: q from 9e-14 to 1 - 9e-14
_BISECTIONS = 48


def log_mean_exp(values: Iterable[float]) -> float:
    """log(mean(exp(v))) without overflow: an equal-weight mixture of e-values, in logs."""
    items = list(values)
    top = max(items)
    if top == -math.inf:
        return -math.inf
    return top + math.log(math.fsum(math.exp(v - top) for v in items) / len(items))


def binomial_log_e(events: int, trials: int, rate: float, ratios: Sequence[float]) -> float:
    """log of the equal-weight mixture over odds ratios `ratios` of binomial likelihood ratios
    against `rate`, after `events` in `trials`."""
    return log_mean_exp(
        events * math.log(r) - trials * math.log1p((r - 1.0) * rate) for r in ratios
    )


def binomial_increments(events: int, trials: int, rate: float,
                        ratios: Sequence[float]) -> tuple[float, ...]:
    """Each alternative's log LR for one batch (`events` in `trials`) against `rate`."""
    return tuple(events * math.log(r) - trials * math.log1p((r - 1.0) * rate) for r in ratios)


def bet_increments(events: int, trials: int, rate: float,
                   bets: Sequence[float] = FAIL_BETS) -> tuple[float, ...]:
    """log factors that one closed slice (`events` in `trials`) adds to each bet's product,
    testing "rate <= `rate`"."""
    excess = events / (trials * rate) - 1.0  # in [-1, 1/rate - 1]
    return tuple(math.log1p(b * excess) for b in bets)


def ratio_increments(canary_events: int, baseline_events: int, share: float,
                     bets: Sequence[float] = FAIL_BETS) -> tuple[float, ...]:
    """Bets on the canary's share of one slice's events, testing "share <= `share`"."""
    excess = canary_events / ((canary_events + baseline_events) * share) - 1.0
    return tuple(math.log1p(b * excess) for b in bets)


def lower_bound(events: int, trials: int, level: float) -> float:
    """The lower end of a level-`level` confidence sequence for the rate: the largest q that
    the fail-side mixture rejects (0 if it rejects none)."""
    goal = -math.log(level)
    if binomial_log_e(events, trials, 0.0, FAIL_RATIOS) < goal:
        return 0.0
    # The mixture falls as q grows: find where it crosses the goal.
    return _crossing(lambda q: binomial_log_e(events, trials, q, FAIL_RATIOS) >= goal)


def upper_bound(events: int, trials: int, level: float) -> float:
    """The upper end: the smallest q that the pass-side mixture rejects (1 if none)."""
    goal = -math.log(level)
    if events == trials or _pass_at_one(events, trials) < goal:
        return 1.0
    # The pass mixture grows with q: find the first q where it reaches the goal.
    return _crossing(lambda q: binomial_log_e(events, trials, q, PASS_RATIOS) < goal)


def _pass_at_one(events: int, trials: int) -> float:
    # The limit q -> 1 of the pass mixture: each ratio r gives (n - S) * log(1/r).
    return log_mean_exp(-(trials - events) * math.log(r) for r in PASS_RATIOS)


def _crossing(below: Callable[[float], bool]) -> float:
    """The q in (0, 1) where the monotone predicate `below(q)` turns from True to False."""
    lo, hi = -_LOGIT_RANGE, _LOGIT_RANGE
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2.0
        if below(_expit(mid)):
            lo = mid
        else:
            hi = mid
    return _expit((lo + hi) / 2.0)


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
