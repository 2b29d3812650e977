"""What a sequential test concluded, and how it reads for `/status` and an abort reason.

The interval is a confidence sequence (Howard, Ramdas et al.): it covers the true rate at
every moment at once with probability 1 - alpha - beta, so it may be read as often as the
verdict. It is the inversion of the binomial mixtures (independent requests); the fail
verdict itself bets on slices and discounts bursts, so with bursty errors it can trail the
interval's lower end by a few slices. `evidence` has the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from splitproxy.rollout.evidence import lower_bound, upper_bound


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class RateVerdict:
    outcome: Outcome
    threshold: float
    alpha: float
    beta: float
    events: int
    trials: int
    log_e_fail: float  # natural log of the fail-side e-value; fail at -ln(alpha)
    log_e_pass: float

    @property
    def estimate(self) -> float | None:
        return self.events / self.trials if self.trials else None

    def interval(self) -> tuple[float, float]:
        """(lower, upper) of the rate: computed on demand (about 0.2 ms)."""
        return (lower_bound(self.events, self.trials, self.alpha),
                upper_bound(self.events, self.trials, self.beta))

    def summary(self, name: str = "error rate", events_word: str = "errors") -> str:
        """E.g. "error rate 8.1% [5.2%, 12.3%] > 1%: e=143 >= 100 (n=160, 13 errors)"."""
        counts = f"(n={self.trials}, {self.events} {events_word})"
        if not self.trials:
            return f"{name}: no requests yet, limit {_pct(self.threshold)}: inconclusive"
        lo, hi = self.interval()
        head = f"{name} {_pct(self.events / self.trials)} [{_pct(lo)}, {_pct(hi)}]"
        return _tail(head, self.outcome, _pct(self.threshold), self.log_e_fail,
                     self.log_e_pass, self.alpha, self.beta, counts)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.interval()
        return {"outcome": str(self.outcome), "threshold": self.threshold,
                "events": self.events, "trials": self.trials, "estimate": self.estimate,
                "lower": lo, "upper": hi, "log_e_fail": self.log_e_fail,
                "log_e_pass": self.log_e_pass, "fail_at": 1.0 / self.alpha,
                "pass_at": 1.0 / self.beta}


@dataclass(frozen=True, slots=True)
class RatioVerdict:
    outcome: Outcome
    margin: float
    alpha: float
    beta: float
    canary_events: int
    canary_trials: int
    baseline_events: int
    baseline_trials: int
    log_e_fail: float
    log_e_pass: float

    @property
    def allowed(self) -> float:
        return 1.0 + self.margin

    @property
    def estimate(self) -> float | None:
        """The canary's rate over the baseline's (None while either has no events)."""
        if not (self.canary_trials and self.baseline_trials and self.baseline_events):
            return None
        return (self.canary_events / self.canary_trials) / (
            self.baseline_events / self.baseline_trials)

    def interval(self) -> tuple[float, float | None]:
        """(lower, upper) of the rate ratio, None for unbounded. Exact when the split stayed
        the same through the test (the engine restarts the test at each step)."""
        if not (self.canary_trials and self.baseline_trials):
            return 0.0, None
        total = self.canary_events + self.baseline_events
        scale = self.baseline_trials / self.canary_trials
        lo = lower_bound(self.canary_events, total, self.alpha)
        hi = upper_bound(self.canary_events, total, self.beta)
        return lo / (1.0 - lo) * scale, (hi / (1.0 - hi) * scale if hi < 1.0 else None)

    def summary(self, name: str = "error rate") -> str:
        counts = (f"(canary {self.canary_events} of {self.canary_trials}, baseline "
                  f"{self.baseline_events} of {self.baseline_trials})")
        estimate = self.estimate
        lo, hi = self.interval()
        head = (f"{name} vs baseline x{_num(estimate) if estimate is not None else '?'} "
                f"[{_num(lo)}, {_num(hi) if hi is not None else 'inf'}]")
        return _tail(head, self.outcome, f"x{_num(self.allowed)}", self.log_e_fail,
                     self.log_e_pass, self.alpha, self.beta, counts)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.interval()
        return {"outcome": str(self.outcome), "allowed_ratio": self.allowed,
                "canary_events": self.canary_events, "canary_trials": self.canary_trials,
                "baseline_events": self.baseline_events,
                "baseline_trials": self.baseline_trials, "estimate": self.estimate,
                "lower": lo, "upper": hi, "log_e_fail": self.log_e_fail,
                "log_e_pass": self.log_e_pass, "fail_at": 1.0 / self.alpha,
                "pass_at": 1.0 / self.beta}


def _tail(head: str, outcome: Outcome, limit: str, log_fail: float, log_pass: float,
          alpha: float, beta: float, counts: str, worse: str = ">", better: str = "<") -> str:
    """`worse`/`better`: how the bad and the good side compare with the limit (a floor, such
    as a custom metric's success rate, swaps them)."""
    if outcome is Outcome.FAIL:
        return f"{head} {worse} {limit}: e={_e(log_fail)} >= {_num(1 / alpha)} {counts}"
    if outcome is Outcome.PASS:
        return f"{head} {better} {limit}: e={_e(log_pass)} >= {_num(1 / beta)} {counts}"
    return (f"{head} vs {limit}: inconclusive, fail e={_e(log_fail)} < {_num(1 / alpha)}, "
            f"pass e={_e(log_pass)} < {_num(1 / beta)} {counts}")


def _pct(rate: float) -> str:
    return f"{rate * 100:.3g}%"


def _num(value: float) -> str:
    if value >= 1e6:
        return f"{value:.2g}"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _e(log_e: float) -> str:
    if log_e > 690:  # beyond a float: say the power of ten
        return f"10^{log_e / math.log(10):.0f}"
    return _num(math.exp(log_e))
