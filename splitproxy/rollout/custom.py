"""Custom metrics as guard tests: what a reading carries, and which test judges it how.

A custom metric (`config.metrics.CustomMetric`) gives, per judged version, up to two tests:
one against its `threshold`, one against the baseline (`compare_to_baseline`). Which test:

| metric | threshold | against the baseline |
| --- | --- | --- |
| counts, direction below | `RateLimit` on events among total | `RatioLimit` on events |
| counts, direction above | `RateLimit` on (total - events) | `RatioLimit` on (total - events) |
| gauge | `GaugeLimit` (sign test on block means) | `GaugeLimit(paired=True)` |

"Events" of a counts metric with `direction: above` (a success rate) are good events: the
tests count the others, so "success rate >= 99%" is "failure rate <= 1%", judged exactly as
the built-in error rate (same slices, same alpha share), and shown the way it was written.

Pure: the guard (`rollout.guard`) calls these with the metric, the test's states and the
metric's sample of one reading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from splitproxy.config.metrics import CustomMetric, Direction
from splitproxy.rollout.gauges import (
    GaugeLimit,
    GaugeState,
    GaugeVerdict,
    judge_gauge,
    observe_gauge,
)
from splitproxy.rollout.sequential import (
    RateLimit,
    RateState,
    RatioLimit,
    RatioState,
    judge,
    judge_ratio,
    observe,
    observe_ratio,
)
from splitproxy.rollout.verdicts import RateVerdict, RatioVerdict, _pct, _tail

Limit = RateLimit | RatioLimit | GaugeLimit
State = RateState | RatioState | GaugeState
Verdict = RateVerdict | RatioVerdict | GaugeVerdict


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One reading of one custom metric: per version, the counts since the previous reading
    (`counts`: (events, total), exact differences of raw counters) or the value now
    (`values`). A version without a number is absent; `error` says why a query gave none
    (the metric is inconclusive for that reading: it never passes or fails on it)."""

    counts: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    values: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None


def kind(metric: CustomMetric) -> str:
    return "counts" if metric.counts else "gauge"


def new_state(metric: CustomMetric, against: bool, now: float) -> State:
    if not metric.counts:
        return GaugeState(since=now)
    return RatioState(since=now) if against else RateState(since=now)


def load_state(metric: CustomMetric, against: bool, data: Mapping[str, Any]) -> State:
    """Raises ValueError (or KeyError, TypeError) for anything `new_state(...).to_json()`
    could not have written."""
    if not metric.counts:
        return GaugeState.from_json(data)
    return RatioState.from_json(data) if against else RateState.from_json(data)


def limit(metric: CustomMetric, threshold: float, against: bool, alpha: float,
          beta: float) -> Limit:
    """`threshold`: the test's (the metric's threshold, or the comparison's margin)."""
    if not metric.counts:
        return GaugeLimit(threshold, metric.direction, alpha, beta,
                          block_seconds=metric.block_seconds, paired=against)
    if against:
        return RatioLimit(margin=threshold, alpha=alpha, beta=beta)
    bad = threshold if metric.direction == Direction.BELOW else 1.0 - threshold
    return RateLimit(threshold=round(bad, 12), alpha=alpha, beta=beta)


def _bad(metric: CustomMetric, counts: tuple[int, int] | None) -> tuple[int, int]:
    """(bad events, total) of one version's counts; events never exceed the total."""
    if counts is None:
        return 0, 0
    events, total = counts
    events = min(max(events, 0), total)
    return (events, total) if metric.direction == Direction.BELOW else (total - events, total)


def observe_sample(metric: CustomMetric, lim: Limit, state: State, sample: MetricSample,
                   version: str, against: str | None, now: float) -> State:
    """Fold one reading of the metric into one test's state (a failed reading adds nothing)."""
    if sample.error is not None and not sample.counts and not sample.values:
        return state
    if isinstance(lim, GaugeLimit):
        assert isinstance(state, GaugeState)
        value = sample.values.get(version)
        if value is None:
            return state
        base = sample.values.get(against) if against is not None else None
        return observe_gauge(lim, state, value, base, now)
    if not sample.counts:
        return state  # a counts metric whose reading failed: nothing to count
    events, total = _bad(metric, sample.counts.get(version))
    if isinstance(lim, RatioLimit):
        assert isinstance(state, RatioState) and against is not None
        base_events, base_total = _bad(metric, sample.counts.get(against))
        return observe_ratio(lim, state, events, base_events, total, base_total, now)
    assert isinstance(state, RateState)
    return observe(lim, state, events, total, now)


def judge_test(lim: Limit, state: State) -> Verdict:
    if isinstance(lim, GaugeLimit):
        assert isinstance(state, GaugeState)
        return judge_gauge(lim, state)
    if isinstance(lim, RatioLimit):
        assert isinstance(state, RatioState)
        return judge_ratio(lim, state)
    assert isinstance(state, RateState)
    return judge(lim, state)


def summary(metric: CustomMetric, version: str, verdict: Verdict) -> str:
    name = f"{version} {metric.name}"
    if isinstance(verdict, GaugeVerdict):
        return verdict.summary(name)
    above = metric.direction == Direction.ABOVE
    if isinstance(verdict, RatioVerdict):
        return verdict.summary(f"{name} {'misses' if above else 'events'}")
    if not above:
        return verdict.summary(name, "events")
    # Shown as written: the rate of good events against a floor.
    n, bad = verdict.trials, verdict.events
    floor = _pct(1.0 - verdict.threshold)
    if not n:
        return f"{name}: nothing counted yet, floor {floor}: inconclusive"
    lo, hi = verdict.interval()
    head = f"{name} {_pct((n - bad) / n)} [{_pct(1.0 - hi)}, {_pct(1.0 - lo)}]"
    return _tail(head, verdict.outcome, floor, verdict.log_e_fail, verdict.log_e_pass,
                 verdict.alpha, verdict.beta, f"(n={n}, {bad} misses)", worse="<", better=">")


def describe(metric: CustomMetric, verdict: Verdict) -> dict[str, Any]:
    """The verdict's numbers for /status, in the metric's own terms."""
    out = {"kind": kind(metric), "direction": str(metric.direction),
           "dry_run": metric.dry_run, **verdict.to_dict()}
    if isinstance(verdict, RateVerdict) and metric.direction == Direction.ABOVE:
        # The test counts misses; /status shows the rate of the metric's own events.
        est = verdict.estimate
        out.update(threshold=1.0 - verdict.threshold,
                   estimate=None if est is None else 1.0 - est,
                   lower=1.0 - out["upper"], upper=1.0 - out["lower"],
                   events=verdict.trials - verdict.events, misses=verdict.events)
    return out


def last_errors(checks: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Why each custom metric's latest reading gave nothing, if it did not (from the check
    history, where `guard.assess` notes it as `metric_errors`)."""
    errors = checks[-1].get("metric_errors") if checks else None
    return {str(k): str(v) for k, v in errors.items()} if isinstance(errors, dict) else {}
