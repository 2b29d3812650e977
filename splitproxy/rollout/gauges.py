"""A gauge's verdict: a sequential sign test on block means, with error rates you can state.

A gauge (a CPU share, an exporter's p99, a queue length) is not a count: there is no "trial"
whose outcome is an event, and successive readings are far from independent (a rate over one
minute read every second moves slowly; a CPU share follows the load). So the gauge test does
not judge readings one by one. It averages them over *blocks* (`block_seconds`, at least
`min_readings` readings; a rule on time and counts only, never on values) and asks of each
closed block one question: was its mean on the bad side of the limit?

* **Fail side**: "the block mean is over the limit in at most half of the blocks", i.e. the
  gauge's typical (median) level, block by block, is within the limit. Under that null, with
  W = 1 for a block over the limit, each factor 1 + b(2W - 1) has conditional mean <= 1, so
  the product over blocks is a test supermartingale (Ville: it reaches 1/alpha with
  probability <= alpha). A mixture over bets b in `SIGN_BETS` (Waudby-Smith & Ramdas) adapts
  to how clearly the gauge is over. A product over *all* blocks would make a gauge that goes
  bad late pay for every good block before (a good block multiplies the bet 0.9 by 0.1), so
  the fail side also mixes over the block the bets start at: start k (0-based) has weight
  1 / ((k+1)(k+2)), the weights of `budget`'s restarts, summing to 1. Each start's product is
  a test supermartingale (1 until it starts), and so is their weighted sum: a fault that
  begins after k good blocks costs ln((k+1)(k+2)) nats, not about 2.3 per good block. A
  canary over the limit in every block from the start fails after 14 blocks at
  alpha = 0.01/6; one that turns bad after 10 good blocks, after 20 more (36 with one
  product over all blocks).
* **Pass side**: the mirror: blocks *under* the limit, against "at most half are".
* **Against the baseline** (`paired`): the limit of a block is the baseline's mean over the
  same readings, moved by `margin` x |that mean| in the allowed direction: a paired sign test.

What it assumes (README: Custom metrics, with a simulation): given the blocks before it, a
block of a healthy canary is over the limit with probability at most 1/2. That holds for
independent block means; a gauge whose memory is longer than a block makes successive blocks
agree, and a canary whose median sits *exactly* at the limit is then aborted more often than
alpha. Blocks at least as long as the gauge's memory (a rate over `interval`: blocks of
`interval`) keep it near alpha; a canary clearly inside its limit is far safer. Ties (a
block mean exactly at the limit) count against neither side.

Pure: values and times in, a new state and a verdict out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from splitproxy.config.metrics import Direction
from splitproxy.rollout.evidence import log_mean_exp
from splitproxy.rollout.sequential import _Json
from splitproxy.rollout.verdicts import Outcome, _num, _tail

SIGN_BETS: tuple[float, ...] = (0.1, 0.2, 0.35, 0.5, 0.7, 0.9)
_NO_BETS = (0.0,) * len(SIGN_BETS)


@dataclass(frozen=True, slots=True)
class GaugeLimit:
    """Settings of one gauge test: the block mean stays on `direction`'s side of `threshold`
    (or, `paired`, of the baseline's block mean moved by `threshold` x |it|)."""

    threshold: float  # a limit: the value; paired: the relative margin
    direction: Direction
    alpha: float
    beta: float = 0.05
    block_seconds: float = 60.0
    paired: bool = False
    min_readings: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0 or not 0.0 < self.beta < 1.0:
            raise ValueError(f"alpha and beta must be in (0, 1), got {self.alpha} and "
                             f"{self.beta}")
        if not math.isfinite(self.threshold) or (self.paired and self.threshold < 0):
            raise ValueError(f"threshold must be finite (a margin >= 0), got {self.threshold}")
        if not 0.0 <= self.block_seconds < math.inf or self.min_readings < 1:
            raise ValueError("block_seconds must be >= 0 and min_readings >= 1")

    def limit(self, baseline: float | None) -> float:
        """The level a block's mean is held to."""
        if not self.paired:
            return self.threshold
        assert baseline is not None
        slack = self.threshold * abs(baseline)
        return baseline + slack if self.direction == Direction.BELOW else baseline - slack

    def worse(self, value: float, limit: float) -> bool:
        return value > limit if self.direction == Direction.BELOW else value < limit

    def better(self, value: float, limit: float) -> bool:
        return value < limit if self.direction == Direction.BELOW else value > limit


@dataclass(frozen=True, slots=True)
class GaugeState(_Json):
    """A gauge test's evidence since its start (one rollout step)."""

    since: float = 0.0  # when the block still filling began
    readings: int = 0  # in the block still filling
    open_sum: float = 0.0  # its values' sum (paired: the canary's)
    open_base: float = 0.0  # paired: the baseline's values' sum over the same readings
    blocks: int = 0  # closed blocks
    worse: int = 0  # closed blocks whose mean was on the bad side of its limit
    better: int = 0  # ... on the good side (the rest were ties)
    total: float = 0.0  # sum of closed blocks' means, for the estimate
    base_total: float = 0.0  # paired: the baseline's
    last: float = 0.0  # the last closed block's mean (meaningless while blocks == 0)
    last_limit: float = 0.0  # and the level it was held to
    # Fail side, per bet: log of sum_k w_k * (product of the bet's factors from block k on),
    # the not-yet-started starts counting 1 each (`_mix_starts`).
    log_bets: tuple[float, ...] = field(default=_NO_BETS)
    log_pass: tuple[float, ...] = field(default=_NO_BETS)  # pass side, per bet

    def _check(self) -> None:
        if self.worse + self.better > self.blocks:
            raise ValueError("more signs than blocks")


def _bets(win: bool) -> tuple[float, ...]:
    return tuple(math.log1p(b if win else -b) for b in SIGN_BETS)


def _add(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _mix_starts(log_e: tuple[float, ...], step: tuple[float, ...],
                closed: int) -> tuple[float, ...]:
    """The fail side after block number `closed` (0-based) adds the log factors `step`.

    Per bet, E_n = A_n + T_n: A_n the weighted products of the starts so far, T_n = 1/(n+1)
    the weight of the starts still to come. Block n starts start n (weight T_n - T_{n+1})
    and multiplies every started product: E_{n+1} = (E_n - T_{n+1}) * f_n + T_{n+1}."""
    later = -math.log(closed + 2)  # log T_{n+1}
    out = []
    for e, f in zip(log_e, step, strict=True):
        if e <= later:  # E_n >= T_n > T_{n+1} always; only a damaged state gets here
            out.append(later)
            continue
        started = e + math.log1p(-math.exp(later - e)) + f  # log((E_n - T_{n+1}) f_n)
        top = max(started, later)
        out.append(top + math.log(math.exp(started - top) + math.exp(later - top)))
    return tuple(out)


def observe_gauge(limit: GaugeLimit, state: GaugeState, value: float,
                  baseline: float | None, now: float) -> GaugeState:
    """Add one reading at `now` (paired: with the baseline's reading of the same moment; a
    reading without one adds nothing). The open block closes at the first reading at which it
    holds `min_readings` readings and has lasted `block_seconds`."""
    if not math.isfinite(value):
        return state
    if limit.paired and (baseline is None or not math.isfinite(baseline)):
        return state
    n = state.readings + 1
    total, base = state.open_sum + value, state.open_base + (baseline or 0.0)
    if n < limit.min_readings or now - state.since < limit.block_seconds:
        return GaugeState(state.since, n, total, base, state.blocks, state.worse,
                          state.better, state.total, state.base_total, state.last,
                          state.last_limit, state.log_bets, state.log_pass)
    mean = total / n
    base_mean = base / n if limit.paired else None
    level = limit.limit(base_mean)
    worse, better = limit.worse(mean, level), limit.better(mean, level)
    return GaugeState(
        now, 0, 0.0, 0.0, state.blocks + 1, state.worse + worse, state.better + better,
        state.total + mean, state.base_total + (base_mean or 0.0), mean, level,
        _mix_starts(state.log_bets, _bets(worse), state.blocks),
        _add(state.log_pass, _bets(better)))


@dataclass(frozen=True, slots=True)
class GaugeVerdict:
    outcome: Outcome
    threshold: float
    direction: Direction
    paired: bool
    alpha: float
    beta: float
    block_seconds: float
    blocks: int
    worse: int
    better: int
    mean: float | None  # the average of the block means (paired: the canary's)
    base_mean: float | None  # paired: the baseline's
    last: float | None
    last_limit: float | None
    log_e_fail: float
    log_e_pass: float

    def summary(self, name: str) -> str:
        """E.g. "canary cpu 0.93 (13 of 13 blocks above) > 0.8: e=720 >= 600 (blocks of
        60s)"."""
        side = "above" if self.direction == Direction.BELOW else "below"
        limit = (f"x{_num(1 + self.threshold)} the baseline's" if self.paired
                 else _num(self.threshold))
        if self.direction == Direction.ABOVE and self.paired:
            limit = f"{_num(1 - self.threshold)}x the baseline's"
        if self.blocks == 0 or self.mean is None:
            return (f"{name}: no block closed yet (blocks of {self.block_seconds:g}s), "
                    f"limit {limit}: inconclusive")
        head = f"{name} {_num(self.mean)}"
        if self.paired and self.base_mean is not None:
            head += f" vs baseline {_num(self.base_mean)}"
        head += f" ({self.worse} of {self.blocks} blocks {side})"
        below = self.direction == Direction.BELOW
        return _tail(head, self.outcome, limit, self.log_e_fail, self.log_e_pass, self.alpha,
                     self.beta, f"(blocks of {self.block_seconds:g}s)",
                     worse=">" if below else "<", better="<" if below else ">")

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": str(self.outcome), "threshold": self.threshold,
                "direction": str(self.direction), "paired": self.paired,
                "block_seconds": self.block_seconds, "blocks": self.blocks,
                "worse": self.worse, "better": self.better, "estimate": self.mean,
                "baseline_estimate": self.base_mean, "last": self.last,
                "last_limit": self.last_limit, "log_e_fail": self.log_e_fail,
                "log_e_pass": self.log_e_pass, "fail_at": 1.0 / self.alpha,
                "pass_at": 1.0 / self.beta}


def judge_gauge(limit: GaugeLimit, state: GaugeState) -> GaugeVerdict:
    log_fail = log_mean_exp(state.log_bets)
    log_pass = log_mean_exp(state.log_pass)
    if log_fail >= -math.log(limit.alpha):
        outcome = Outcome.FAIL
    elif log_pass >= -math.log(limit.beta):
        outcome = Outcome.PASS
    else:
        outcome = Outcome.INCONCLUSIVE
    closed = state.blocks > 0
    return GaugeVerdict(
        outcome, limit.threshold, limit.direction, limit.paired, limit.alpha, limit.beta,
        limit.block_seconds, state.blocks, state.worse, state.better,
        state.total / state.blocks if closed else None,
        state.base_total / state.blocks if closed and limit.paired else None,
        state.last if closed else None, state.last_limit if closed else None,
        log_fail, log_pass)
