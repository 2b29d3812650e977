"""Canary analysis: one window of counters -> pass / fail / inconclusive, with the numbers.

Pure: takes samples and thresholds, returns a `Check`. No clock, no I/O. Low traffic is
*inconclusive*, never a failure (Flagger counts "no values" as a failed check; its users get
false rollbacks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from splitproxy.config import Analysis

Result = Literal["pass", "fail", "inconclusive"]

_QUANTILES = (("p50", 0.50, "max_p50_ms"), ("p90", 0.90, "max_p90_ms"), ("p99", 0.99, "max_p99_ms"))


class Measured(Protocol):
    """One version's numbers over one window: local counters or a Prometheus query."""

    @property
    def requests(self) -> int: ...
    @property
    def error_rate(self) -> float | None: ...
    def quantile(self, q: float) -> float | None: ...


QUANTILES = tuple(q for _, q, _ in _QUANTILES)


def inconclusive(analysis: Analysis, version: str, now: float, reason: str) -> Check:
    """A check that could not look (e.g. the metrics source failed)."""
    metrics = tuple(MetricVerdict(name, "inconclusive", None, None, None, reason)
                    for name in _metric_names(analysis))
    return Check(now, version, "inconclusive", 0, None, metrics)


@dataclass(frozen=True, slots=True)
class MetricVerdict:
    metric: str  # error_rate, p50, p90, p99
    result: Result
    value: float | None  # the canary's; latency in ms
    limit: float | None  # the absolute threshold, if any
    baseline: float | None  # the baseline's value in the same window, if compared
    reason: str


@dataclass(frozen=True, slots=True)
class Check:
    time: float  # wall clock
    version: str
    result: Result
    requests: int
    baseline_requests: int | None
    metrics: tuple[MetricVerdict, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{m.metric}={_fmt(m.value)}({m.result})" for m in self.metrics]
        return f"{self.result}: {self.version} {self.requests} req, " + ", ".join(parts)


def judge(
    analysis: Analysis, version: str, canary: Measured, baseline: Measured | None, now: float
) -> Check:
    """Judge `canary` over one window, against thresholds and, optionally, the baseline."""
    compare = analysis.compare_to_baseline
    base_ok = baseline is not None and baseline.requests >= analysis.min_requests
    if canary.requests < analysis.min_requests:
        reason = f"{canary.requests} requests < min_requests {analysis.min_requests}"
        metrics = tuple(
            MetricVerdict(name, "inconclusive", None, None, None, reason)
            for name in _metric_names(analysis)
        )
        return Check(now, version, "inconclusive", canary.requests,
                     baseline.requests if baseline else None, metrics)

    verdicts: list[MetricVerdict] = []
    # Error rate: 5xx from the upstream plus the proxy's own 502/503/504, over requests.
    rate = canary.error_rate
    assert rate is not None
    base_rate = baseline.error_rate if baseline is not None and base_ok else None
    results: list[tuple[Result, str]] = []
    if analysis.max_error_rate is not None:
        failed = rate > analysis.max_error_rate
        results.append(("fail" if failed else "pass",
                        f"{rate:.4f} {'>' if failed else '<='} max {analysis.max_error_rate}"))
    if compare is not None:
        if base_rate is None:
            results.append(("inconclusive", "baseline has too few requests to compare"))
        else:
            allowed = base_rate + compare.error_rate_margin
            failed = rate > allowed
            results.append(("fail" if failed else "pass",
                            f"{rate:.4f} {'>' if failed else '<='} baseline {base_rate:.4f} + "
                            f"margin {compare.error_rate_margin}"))
    if results:
        verdicts.append(_combine("error_rate", rate, analysis.max_error_rate, base_rate, results))

    for name, q, field in _QUANTILES:
        limit: float | None = getattr(analysis, field)
        compared = compare is not None and (limit is not None or name == "p99")
        if limit is None and not compared:
            continue
        value = _ms(canary.quantile(q))
        base_value = _ms(baseline.quantile(q)) if baseline is not None and base_ok else None
        results = []
        if limit is not None and value is not None:
            failed = value > limit
            results.append(("fail" if failed else "pass",
                            f"{value:.1f}ms {'>' if failed else '<='} max {limit:g}ms"))
        if compared and compare is not None:
            if base_value is None or value is None:
                results.append(("inconclusive", "baseline has too few requests to compare"))
            else:
                allowed = base_value * compare.latency_factor
                failed = value > allowed
                results.append(("fail" if failed else "pass",
                                f"{value:.1f}ms {'>' if failed else '<='} baseline "
                                f"{base_value:.1f}ms x {compare.latency_factor}"))
        verdicts.append(_combine(name, value, limit, base_value, results))

    overall: Result
    if any(v.result == "fail" for v in verdicts):
        overall = "fail"
    elif verdicts and all(v.result == "pass" for v in verdicts):
        overall = "pass"
    else:
        overall = "inconclusive"
    return Check(now, version, overall, canary.requests,
                 baseline.requests if baseline is not None else None, tuple(verdicts))


def _combine(
    metric: str,
    value: float | None,
    limit: float | None,
    baseline: float | None,
    results: list[tuple[Result, str]],
) -> MetricVerdict:
    """A metric fails if any of its checks fails, passes if one passes and none fails."""
    for wanted in ("fail", "pass"):
        hits = [reason for result, reason in results if result == wanted]
        if hits:
            return MetricVerdict(metric, wanted, value, limit, baseline, "; ".join(hits))
    return MetricVerdict(metric, "inconclusive", value, limit, baseline,
                         "; ".join(r for _, r in results))


def _metric_names(analysis: Analysis) -> list[str]:
    names = ["error_rate"] if analysis.max_error_rate is not None or \
        analysis.compare_to_baseline is not None else []
    for name, _, field in _QUANTILES:
        if getattr(analysis, field) is not None or (
            name == "p99" and analysis.compare_to_baseline is not None
        ):
            names.append(name)
    return names


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
