"""Custom metrics (`analysis.metrics`): PromQL the guard judges beside its own counts, as Argo
Rollouts' AnalysisTemplate (Prometheus provider) and Flagger's MetricTemplate do.

Two kinds, told apart by their fields:

* **counts** (`events` and `total`): two queries of *raw counters*, e.g. deliveries that
  succeeded and all deliveries. The guard takes exact differences between readings and judges
  them with the same sequential tests as its own error rate (`rollout.sequential`).
* **gauge** (`query`): one number per version, e.g. a CPU share or a latency an exporter
  already aggregates. Judged by a sign test on block means (`rollout.gauges`).

The tests themselves are in `rollout.custom`; the readings in `control.sources.custom`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from splitproxy.config.units import Frozen, Name, Timeout

# `{{route}}`, `{{ version }}`: the placeholders a query may use (Flagger's spelling).
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
PLACEHOLDERS = ("route", "version", "interval", "labels")
MAX_QUERY = 4000  # characters: a query is sent on every reading, per version


def _query(value: str) -> str:
    if not value.strip():
        raise ValueError("empty query")
    if len(value) > MAX_QUERY:
        raise ValueError(f"a query of at most {MAX_QUERY} characters, got {len(value)}")
    unknown = sorted({m[1] for m in PLACEHOLDER.finditer(value)} - set(PLACEHOLDERS))
    if unknown:
        raise ValueError(f"unknown placeholder {{{{{unknown[0]}}}}}: use "
                         + ", ".join(f"{{{{{p}}}}}" for p in PLACEHOLDERS))
    if "version" not in {m[1] for m in PLACEHOLDER.finditer(value)}:
        raise ValueError("the query must select one version with {{version}} (e.g. "
                         "version=\"{{version}}\"): otherwise every version gets the same "
                         "number and nothing tells the canary apart")
    return value


Query = Annotated[str, AfterValidator(_query)]


class Direction(StrEnum):
    """Which side of the threshold (and of the baseline) is good."""

    BELOW = "below"  # the value must stay below: a CPU share, a latency, an error ratio
    ABOVE = "above"  # the value must stay above: a success rate, a throughput


class MetricComparison(Frozen):
    """Against the baseline, over the same time: for counts, the canary's rate of bad events
    is at most (1 + margin) times the baseline's (the built-in comparison's test); for a
    gauge, the canary's block mean is worse than the baseline's by at most margin x |the
    baseline's|."""

    margin: Annotated[float, Field(ge=0, le=100)] = 0.2


class CustomMetric(Frozen):
    """One metric of `analysis.metrics`."""

    name: Name
    query: Query | None = None  # a gauge: one number per version
    events: Query | None = None  # counts: raw counters of the events counted ...
    total: Query | None = None  # ... and of everything they are counted among
    threshold: float | None = None
    direction: Direction  # required: a wrong default would judge the wrong way round
    compare_to_baseline: MetricComparison | None = None
    # `{{interval}}` in the queries: a range for rate() and the like (Flagger's default).
    interval: Timeout = 60.0
    # Gauges: values are averaged over blocks this long, and each block is one observation
    # of the sign test (default: `interval`, so a rate over `interval` read at the end of one
    # block shares no samples with the next block's last reading).
    block: Timeout | None = None
    dry_run: bool = False  # evaluated and shown, never aborts, never holds a step

    @model_validator(mode="after")
    def _consistent(self) -> CustomMetric:
        counts = self.events is not None or self.total is not None
        if counts and (self.events is None or self.total is None):
            raise ValueError("a counts metric needs both `events` and `total` (raw counters)")
        if counts == (self.query is not None):
            raise ValueError("write either `query` (a gauge) or `events` and `total` (counts)")
        if self.threshold is None and self.compare_to_baseline is None:
            raise ValueError("a metric judges nothing without `threshold` or "
                             "`compare_to_baseline`")
        if counts and self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError("the threshold of a counts metric is a rate in (0, 1): events / "
                             "total must stay below it, or above it with direction: above")
        if self.block is not None and counts:
            raise ValueError("`block` is for gauges; counts are judged in slices like the "
                             "built-in error rate")
        return self

    @property
    def counts(self) -> bool:
        return self.query is None

    @property
    def block_seconds(self) -> float:
        return self.block if self.block is not None else self.interval


def promql_duration(seconds: float) -> str:
    """`{{interval}}` as PromQL writes a duration: 60 -> `60s`, 1.5 -> `1500ms`."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def label_matchers(labels: Mapping[str, str]) -> str:
    """`analysis.prometheus.labels` as PromQL matchers, each after a comma (`,job="shop"`):
    what `{{labels}}` becomes, and what the built-in query adds. Empty without labels."""
    return "".join(f",{name}={json.dumps(value)}" for name, value in sorted(labels.items()))


def render(query: str, route: str, version: str, interval: float,
           labels: Mapping[str, str] | None = None) -> str:
    """The query with its placeholders filled in (names are letters, digits, `_.-`: safe
    inside PromQL's double quotes; label values are quoted)."""
    values = {"route": route, "version": version, "interval": promql_duration(interval),
              "labels": label_matchers(labels or {})}
    return PLACEHOLDER.sub(lambda m: values[m[1]], query)
