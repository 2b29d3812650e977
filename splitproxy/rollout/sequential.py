"""Anytime-valid verdicts: pass, fail or inconclusive from counts, with error rates you can state.

Pure: counts and settings in, a new state and a verdict out. No clock, no I/O, no asyncio.

Two tests, each with a fail side (alpha) and a pass side (beta):

* `RateLimit` — "at most `threshold` of the canary's requests are events": errors against
  `max_error_rate`, or requests slower than a limit against `max_p99_ms` (threshold 0.01),
  `max_p90_ms` (0.1), `max_p50_ms` (0.5); see `latency_threshold`.
* `RatioLimit` — "the canary's event rate is at most (1 + margin) times the baseline's, over
  the same time": each event of a slice is the canary's with probability at most
  q0 = (1+m)n_c / ((1+m)n_c + n_b), whatever the baseline's own rate (Lindon & Malek's
  conditional test for counting processes, as Netflix runs it on canaries).

Fail is burst-robust: it bets on slices of traffic (at least `slice_requests` requests and
`slice_seconds`; see `evidence`) and needs only that each slice's expected count, given the
past, is within the limit: errors may cluster any way they like *within* a slice. Pass (and the
interval shown) assume independent requests; a false pass only lets a step advance, and the
fail side keeps judging. The README (The guard) has the figures.

How the engine calls it, per route, judged version and metric, on each tick (~1 s):

    limit = RateLimit(threshold=0.01, alpha=budget.step_alpha(cfg.alpha, segment, planned,
                      tests, replicas), beta=cfg.beta)
    state = RateState(since=now)                       # at each step's start (test restart)
    state = observe(limit, state, events, trials, now) # exact counter differences of the tick
    verdict = judge(limit, state)                      # pass / fail / inconclusive
    verdict.summary("error rate", "errors")            # for the abort reason and /status

`state.to_json()` / `RateState.from_json()` persist it with the rollout (replicas share it);
the ratio test is the same with `RatioState`, `observe_ratio` and `judge_ratio`. Fail wins
over pass. A step advances at a check where its time is up and the verdict *at that check* is
pass: not latching an earlier pass costs a healthy canary nothing (its evidence keeps
growing) and stops a bursty bad canary that looked clean between two bursts. The fail side
keeps running until the step ends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self

from splitproxy.rollout.evidence import (
    FAIL_BETS,
    PASS_RATIOS,
    bet_increments,
    binomial_increments,
    binomial_log_e,
    log_mean_exp,
    ratio_increments,
)
from splitproxy.rollout.verdicts import Outcome, RateVerdict, RatioVerdict

_STATE_VERSION = 1
_NO_BETS = (0.0,) * len(FAIL_BETS)
_NO_PASS = (0.0,) * len(PASS_RATIOS)


def latency_threshold(quantile: float) -> float:
    """`max_p99_ms: T` means "at most 1% of requests slower than T": threshold 0.01."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    return round(1.0 - quantile, 12)


def _check_levels(alpha: float, beta: float, slice_requests: int, slice_seconds: float) -> None:
    if not 0.0 < alpha < 1.0 or not 0.0 < beta < 1.0:
        raise ValueError(f"alpha and beta must be in (0, 1), got {alpha} and {beta}")
    if isinstance(slice_requests, bool) or slice_requests < 1:
        raise ValueError(f"slice_requests must be >= 1, got {slice_requests}")
    if not 0.0 <= slice_seconds < math.inf:
        raise ValueError(f"slice_seconds must be >= 0, got {slice_seconds}")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Settings of one rate test: at most `threshold` of requests are events."""

    threshold: float
    alpha: float  # this test's share of the rollout's false-abort budget (budget.step_alpha)
    beta: float = 0.05  # false-pass level
    # A slice holds at least this many requests and lasts at least this long: a burst inside
    # one counts as one observation. Longer slices tolerate longer bursts and detect later:
    # 3 s keeps a canary at 10x caught within 30 s at 10 req/s (README: the guard).
    slice_requests: int = 30
    slice_seconds: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            # 0 can never pass (no count proves a rate below 0) and 1 can never fail.
            raise ValueError(
                f"threshold must be in (0, 1), got {self.threshold}: for 'no errors at all' "
                "write a small rate such as 0.001; to judge nothing, remove the limit")
        _check_levels(self.alpha, self.beta, self.slice_requests, self.slice_seconds)


@dataclass(frozen=True, slots=True)
class RatioLimit:
    """Settings of one comparison: canary rate <= (1 + margin) x baseline rate."""

    margin: float  # relative: 0.2 lets the canary have 20% more errors than the baseline
    alpha: float
    beta: float = 0.05
    # Longer than a rate test's slices: a burst that crosses a slice boundary is seen as a
    # run of the canary's own errors, which the split does not predict (README: the guard).
    slice_requests: int = 60  # canary requests per slice
    slice_seconds: float = 6.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin <= 100.0:
            raise ValueError(f"margin must be in [0, 100], got {self.margin}")
        _check_levels(self.alpha, self.beta, self.slice_requests, self.slice_seconds)


class _Json:
    """Frozen states to and from plain JSON values, checked on the way in."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": _STATE_VERSION}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Raises ValueError on anything but what `to_json` wrote (the engine then restarts
        the test: a state it cannot read is evidence it cannot trust)."""
        if data.get("v") != _STATE_VERSION:
            raise ValueError(f"unknown state version {data.get('v')!r}")
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            raw = data.get(f.name)
            default = f.default_factory() if callable(f.default_factory) else f.default
            if isinstance(default, tuple):
                if not isinstance(raw, list) or len(raw) != len(default) or not all(
                        isinstance(x, int | float) and not isinstance(x, bool)
                        and math.isfinite(x) for x in raw):
                    raise ValueError(f"{f.name}: expected {len(default)} finite numbers")
                values[f.name] = tuple(float(x) for x in raw)
            elif isinstance(default, float):  # a time
                if not isinstance(raw, int | float) or isinstance(raw, bool) \
                        or not math.isfinite(raw):
                    raise ValueError(f"{f.name}: expected a time, got {raw!r}")
                values[f.name] = float(raw)
            else:
                if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
                    raise ValueError(f"{f.name}: expected a count, got {raw!r}")
                values[f.name] = raw
        state = cls(**values)
        state._check()  # type: ignore[attr-defined]
        return state


@dataclass(frozen=True, slots=True)
class RateState(_Json):
    """A rate test's evidence since its start (one rollout step)."""

    since: float = 0.0  # when the slice still filling began: the test's start, then each close
    events: int = 0  # cumulative, for the pass side and for display
    trials: int = 0
    open_events: int = 0  # the slice still filling
    open_trials: int = 0
    slices: int = 0
    log_bets: tuple[float, ...] = field(default=_NO_BETS)  # fail side, per bet

    def _check(self) -> None:
        if self.events > self.trials or self.open_events > self.open_trials \
                or self.open_trials > self.trials or self.open_events > self.events:
            raise ValueError("events exceed trials")


@dataclass(frozen=True, slots=True)
class RatioState(_Json):
    """A comparison's evidence since its start."""

    since: float = 0.0
    canary_events: int = 0
    canary_trials: int = 0
    baseline_events: int = 0
    baseline_trials: int = 0
    open_canary_events: int = 0
    open_canary_trials: int = 0
    open_baseline_events: int = 0
    open_baseline_trials: int = 0
    slices: int = 0
    log_bets: tuple[float, ...] = field(default=_NO_BETS)  # fail side
    log_pass: tuple[float, ...] = field(default=_NO_PASS)  # pass side, per alternative

    def _check(self) -> None:
        if self.canary_events > self.canary_trials \
                or self.baseline_events > self.baseline_trials \
                or self.open_canary_events > self.open_canary_trials \
                or self.open_baseline_events > self.open_baseline_trials \
                or self.open_canary_trials > self.canary_trials \
                or self.open_baseline_trials > self.baseline_trials:
            raise ValueError("events exceed trials")


def _counts(events: int, trials: int) -> None:
    for value in (events, trials):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"counts must be non-negative integers, got {value!r}")
    if events > trials:
        raise ValueError(f"{events} events in {trials} trials")


def observe(limit: RateLimit, state: RateState, events: int, trials: int,
            now: float) -> RateState:
    """Add the counts of one tick ending at `now`. The open slice closes at the first tick at
    which it holds `slice_requests` requests and has lasted `slice_seconds` (a rule on
    request counts and time only, never on events: that is what keeps the bets fair)."""
    _counts(events, trials)
    open_events, open_trials = state.open_events + events, state.open_trials + trials
    bets, slices, since = state.log_bets, state.slices, state.since
    if open_trials >= limit.slice_requests and now - since >= limit.slice_seconds:
        step = bet_increments(open_events, open_trials, limit.threshold)
        bets = tuple(a + b for a, b in zip(bets, step, strict=True))
        open_events, open_trials, slices, since = 0, 0, slices + 1, now
    return RateState(since, state.events + events, state.trials + trials, open_events,
                     open_trials, slices, bets)


def observe_ratio(limit: RatioLimit, state: RatioState, canary_events: int,
                  baseline_events: int, canary_trials: int, baseline_trials: int,
                  now: float) -> RatioState:
    """Add one tick's counts of both versions. A slice closes once it holds `slice_requests`
    canary requests and at least one baseline request, and has lasted `slice_seconds`."""
    _counts(canary_events, canary_trials)
    _counts(baseline_events, baseline_trials)
    ce, ct = state.open_canary_events + canary_events, state.open_canary_trials + canary_trials
    be = state.open_baseline_events + baseline_events
    bt = state.open_baseline_trials + baseline_trials
    bets, passes, slices, since = state.log_bets, state.log_pass, state.slices, state.since
    if ct >= limit.slice_requests and bt > 0 and now - since >= limit.slice_seconds:
        if ce + be > 0:
            allowed = (1.0 + limit.margin) * ct
            share = allowed / (allowed + bt)  # the canary's share of events under the null
            bets = tuple(a + b for a, b in zip(bets, ratio_increments(ce, be, share),
                                               strict=True))
            passes = tuple(a + b for a, b in zip(
                passes, binomial_increments(ce, ce + be, share, PASS_RATIOS), strict=True))
        ce = ct = be = bt = 0
        slices, since = slices + 1, now
    return RatioState(
        since, state.canary_events + canary_events, state.canary_trials + canary_trials,
        state.baseline_events + baseline_events, state.baseline_trials + baseline_trials,
        ce, ct, be, bt, slices, bets, passes)


def _outcome(log_fail: float, log_pass: float, alpha: float, beta: float) -> Outcome:
    if log_fail >= -math.log(alpha):
        return Outcome.FAIL
    if log_pass >= -math.log(beta):
        return Outcome.PASS
    return Outcome.INCONCLUSIVE


def judge(limit: RateLimit, state: RateState) -> RateVerdict:
    """The verdict on the evidence so far; cheap enough to call every tick."""
    log_fail = log_mean_exp(state.log_bets)
    log_pass = binomial_log_e(state.events, state.trials, limit.threshold, PASS_RATIOS)
    return RateVerdict(_outcome(log_fail, log_pass, limit.alpha, limit.beta),
                       limit.threshold, limit.alpha, limit.beta, state.events, state.trials,
                       log_fail, log_pass)


def judge_ratio(limit: RatioLimit, state: RatioState) -> RatioVerdict:
    log_fail = log_mean_exp(state.log_bets)
    log_pass = log_mean_exp(state.log_pass)
    return RatioVerdict(_outcome(log_fail, log_pass, limit.alpha, limit.beta),
                        limit.margin, limit.alpha, limit.beta, state.canary_events,
                        state.canary_trials, state.baseline_events, state.baseline_trials,
                        log_fail, log_pass)

