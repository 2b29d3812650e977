"""Readings of custom metrics (`analysis.metrics`) from Prometheus' HTTP API.

Each reading runs every metric's queries at once, for every version of the route (a counts
metric must have its starting point before its version gets traffic), all evaluated at one
instant so that a ratio's two counters agree. Two steps, so that a reading which lost its
generation (a new run began while it was in flight) changes nothing:

* `fetch` (I/O): the raw answers, never raising: a failed, empty or ambiguous query is an
  error string, and the metric is inconclusive for that reading.
* `samples` (no I/O): counts metrics become exact differences of their raw counters, per
  series (`tally.CounterDiff`: resets, new and missing series handled as for the built-in
  counters); gauges pass their values on.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from splitproxy.config.guard import PrometheusQuery
from splitproxy.config.metrics import CustomMetric, render
from splitproxy.config.models import Route
from splitproxy.control.sources.prometheus import PrometheusSource
from splitproxy.rollout.custom import MetricSample
from splitproxy.rollout.tally import CounterDiff, Series

EVENTS, TOTAL = "events", "total"
_FAILURES = (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError, KeyError, TypeError,
             IndexError)


@dataclass(frozen=True, slots=True)
class Fetched:
    """One metric's raw answers in one reading."""

    queries: dict[str, str]  # what was sent, by version (counts: `version events|total`)
    series: dict[Series, float] | None = None  # counts: raw counters; None if any failed
    values: dict[str, float] = field(default_factory=dict)  # gauges: per version
    error: str | None = None


def _labels(item: dict[str, object]) -> str:
    metric = item.get("metric")
    if not isinstance(metric, dict):
        raise ValueError(f"unexpected result item {item!r}")
    return ",".join(f"{k}={metric[k]}" for k in sorted(metric))


def _number(item: dict[str, object]) -> float:
    value = item.get("value")
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"unexpected result item {item!r}")
    return float(str(value[1]))


class CustomReader:
    def __init__(self, prometheus: PrometheusSource | None = None) -> None:
        self.prometheus = prometheus or PrometheusSource()
        self._diffs: dict[str, dict[str, CounterDiff]] = {}  # route -> metric -> counters
        # route -> metric -> the PromQL of the latest reading and its error, for /status
        self.shown: dict[str, dict[str, dict[str, Any]]] = {}

    def reset(self, route: str) -> None:
        """A new run (or judge): the next reading only sets the counters' starting point."""
        self._diffs.pop(route, None)

    def reset_all(self) -> None:
        self._diffs.clear()

    async def close(self) -> None:
        await self.prometheus.close()

    async def fetch(self, route: Route, at: float) -> dict[str, Fetched]:
        """Every metric of the route, read at Unix time `at`."""
        analysis = route.analysis
        if analysis is None or not analysis.metrics:
            return {}
        versions = list(route.versions)
        where = analysis.prometheus_query
        got = await asyncio.gather(*(self._fetch(where, route.name, m, versions, at)
                                     for m in analysis.metrics))
        out = {m.name: f for m, f in zip(analysis.metrics, got, strict=True)}
        self.shown[route.name] = {n: {"queries": f.queries, "error": f.error}
                                  for n, f in out.items()}
        return out

    async def _fetch(self, where: PrometheusQuery, route: str, m: CustomMetric,
                     versions: Sequence[str], at: float) -> Fetched:
        if m.events is not None and m.total is not None:
            return await self._counts(where, route, m, m.events, m.total, versions, at)
        assert m.query is not None
        queries = {v: render(m.query, route, v, m.interval, where.labels) for v in versions}
        answers = await asyncio.gather(*(self._one(where, q, at) for q in queries.values()),
                                       return_exceptions=True)
        values: dict[str, float] = {}
        errors: list[str] = []
        for v, answer in zip(versions, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, _FAILURES):
                    raise answer
                errors.append(f"{v}: prometheus query failed: {type(answer).__name__}: "
                              f"{answer}")
            elif len(answer) != 1:
                errors.append(f"{v}: no data (the query returned no series)" if not answer
                              else f"{v}: {len(answer)} series: aggregate them to one number "
                              "with sum, avg or max")
            elif not math.isfinite(value := _number(answer[0])):
                errors.append(f"{v}: no data (the query returned {value})")
            else:
                values[v] = value
        return Fetched(queries, values=values, error="; ".join(errors) or None)

    async def _counts(self, where: PrometheusQuery, route: str, m: CustomMetric, events: str,
                      total: str, versions: Sequence[str], at: float) -> Fetched:
        jobs = [(v, which, render(q, route, v, m.interval, where.labels))
                for v in versions for which, q in ((EVENTS, events), (TOTAL, total))]
        queries = {f"{v} {which}": q for v, which, q in jobs}
        try:
            answers = await asyncio.gather(*(self._one(where, q, at) for _, _, q in jobs))
            series: dict[Series, float] = {}
            for (v, which, _), answer in zip(jobs, answers, strict=True):
                for item in answer:
                    value = _number(item)
                    if math.isfinite(value):
                        series[(v, which, _labels(item))] = value
        except _FAILURES as exc:
            return Fetched(queries, error=f"prometheus query failed: {type(exc).__name__}: "
                           f"{exc}")
        if not any(k[1] == TOTAL for k in series):
            return Fetched(queries, error="no data: the `total` query returned no series "
                           "for any version")
        return Fetched(queries, series=series)

    async def _one(self, where: PrometheusQuery, promql: str,
                   at: float) -> list[dict[str, object]]:
        return await self.prometheus.instant(where, promql, at)

    def samples(self, route: Route, fetched: dict[str, Fetched],
                mono: float) -> dict[str, MetricSample]:
        """The samples a `Measurement` carries: exact differences for counts metrics."""
        analysis = route.analysis
        metrics = {m.name: m for m in analysis.metrics} if analysis is not None else {}
        out: dict[str, MetricSample] = {}
        for name, f in fetched.items():
            m = metrics.get(name)
            if m is None:
                continue  # removed by a reload while the reading was in flight
            if not m.counts:
                out[name] = MetricSample(values=f.values, error=f.error)
            elif f.series is None:
                out[name] = MetricSample(error=f.error)
            else:
                diff = self._diffs.setdefault(route.name, {}).setdefault(name, CounterDiff())
                sums = diff.deltas(f.series, mono)
                versions = {v for v, _ in sums}
                out[name] = MetricSample(counts={
                    v: (round(sums.get((v, EVENTS), 0.0)), round(sums.get((v, TOTAL), 0.0)))
                    for v in sorted(versions)})
        return out
