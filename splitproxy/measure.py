"""Where the guard's numbers come from, behind one interface: this process's own counters or
PromQL over every replica's series. The engine runs each reading as its own task with a
timeout and delivers it as an event, so a slow source delays nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from splitproxy.analysis import QUANTILES, Measured
from splitproxy.clock import Clock
from splitproxy.config import Route
from splitproxy.promsource import PrometheusSource
from splitproxy.window import Sample, Window


class MeasureError(Exception):
    """The source could not answer; the check is inconclusive, never a failure."""

    def __init__(self, message: str, queries: dict[str, dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.queries = queries


@dataclass(frozen=True, slots=True)
class Reading:
    samples: dict[str, Measured]  # per version, over the span asked for
    queries: dict[str, dict[str, str]] | None = field(default=None)  # PromQL, for /status


class MetricSource(Protocol):
    async def read(self, route: Route, versions: Sequence[str], seconds: float) -> Reading:
        """One reading of `versions` over the last `seconds`; raises MeasureError."""
        ...

    async def close(self) -> None: ...


class LocalSource:
    """This process's counters, as differences between window samples."""

    def __init__(self, window: Window, sample: Callable[[float], None], clock: Clock) -> None:
        self.window = window
        self.sample = sample  # records a window sample at the given monotonic time
        self.clock = clock

    async def read(self, route: Route, versions: Sequence[str], seconds: float) -> Reading:
        now = self.clock.monotonic()
        self.sample(now)
        delta = self.window.delta(now, seconds)
        synthetic = route.analysis is not None and route.analysis.include_synthetic

        def of(version: str) -> Sample:
            sample = delta.get((route.name, version, False), Sample())
            if synthetic:
                sample = sample + delta.get((route.name, version, True), Sample())
            return sample

        return Reading({v: of(v) for v in versions})

    async def close(self) -> None:
        return None


class PromSource:
    """Every replica's series, through Prometheus' HTTP API; all queries of a reading run at
    once, each with its own timeout."""

    def __init__(self) -> None:
        self.prometheus = PrometheusSource()

    async def read(self, route: Route, versions: Sequence[str], seconds: float) -> Reading:
        analysis = route.analysis
        assert analysis is not None
        results = await asyncio.gather(*(
            self.prometheus.measure(analysis.prometheus_url, route.name, v, seconds,
                                    list(QUANTILES), analysis.include_synthetic)
            for v in versions))
        shown = {v: queries for v, (_, queries, _) in zip(versions, results, strict=True)}
        samples: dict[str, Measured] = {}
        for v, (sample, _, error) in zip(versions, results, strict=True):
            if error is not None or sample is None:
                raise MeasureError(error or "no answer", shown)
            samples[v] = sample
        return Reading(samples, shown)

    async def close(self) -> None:
        await self.prometheus.close()
