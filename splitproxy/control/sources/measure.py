"""Where the guard's counts come from, behind one interface: cumulative counters per series
(this process's, every replica's shared through Redis, or Prometheus' raw counters of every
replica). The engine runs each reading as its own task with a timeout, takes exact
differences (`tally.CounterDiff`) and delivers them as an event, so a slow source delays
nothing else."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from redis.exceptions import RedisError

from splitproxy.config.models import Route
from splitproxy.control.sources.fleet import CountsBoard
from splitproxy.control.sources.prometheus import PrometheusSource
from splitproxy.dataplane.stats import VersionStats
from splitproxy.rollout.tally import Series, series_of
from splitproxy.routing.table import latency_limits


class MeasureError(Exception):
    """The source could not answer; the check is inconclusive, never a failure."""

    def __init__(self, message: str, queries: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.queries = queries


@dataclass(frozen=True, slots=True)
class Reading:
    series: dict[Series, float]  # cumulative counters of the route's versions
    queries: dict[str, str] | None = field(default=None)  # PromQL, for /status


class MetricSource(Protocol):
    async def read(self, route: Route) -> Reading:
        """The route's cumulative counters now; raises MeasureError."""
        ...

    async def publish(self, route: Route) -> None:
        """On a replica that does not judge: share its counters with the one that does (if
        this source shares any); raises MeasureError."""
        ...

    async def close(self) -> None: ...


def _synthetic(route: Route) -> bool:
    return route.analysis is not None and route.analysis.include_synthetic


class LocalSource:
    """This process's counters (with `--workers N`, every worker's, as the parent sums them)."""

    def __init__(self, counters: Callable[[], Iterable[VersionStats]]) -> None:
        self.counters = counters  # real and synthetic counters, cumulative

    def series(self, route: Route) -> dict[Series, float]:
        return series_of(self.counters(), route.name, latency_limits(route), _synthetic(route))

    async def read(self, route: Route) -> Reading:
        return Reading(self.series(route))

    async def publish(self, route: Route) -> None:
        return None

    async def close(self) -> None:
        return None


class FleetSource:
    """Every replica's counters, shared through the state store's Redis (`fleet`): each
    replica publishes its own; the one that judges reads them all."""

    def __init__(self, local: LocalSource, board: CountsBoard) -> None:
        self.local = local
        self.board = board

    @staticmethod
    def ttl(route: Route) -> float:
        """How long a replica's counters outlive its last publication."""
        interval = route.analysis.interval if route.analysis else 1.0
        return max(10.0, 5 * interval)

    async def publish(self, route: Route) -> None:
        try:
            await self.board.publish(route.name, self.local.series(route), self.ttl(route))
        except (RedisError, OSError) as exc:
            raise MeasureError(f"cannot share counters through redis: {exc}") from exc

    async def read(self, route: Route) -> Reading:
        await self.publish(route)
        try:
            return Reading(await self.board.collect(route.name))
        except (RedisError, OSError) as exc:
            raise MeasureError(f"cannot read the fleet's counters from redis: {exc}") from exc

    async def close(self) -> None:
        return None


class PromSource:
    """Every replica's raw counters, through Prometheus' HTTP API."""

    def __init__(self) -> None:
        self.prometheus = PrometheusSource()

    async def read(self, route: Route) -> Reading:
        analysis = route.analysis
        assert analysis is not None
        series, shown, error = await self.prometheus.counters(
            analysis.prometheus_query, route.name, analysis.include_synthetic)
        if error is not None or series is None:
            raise MeasureError(error or "no answer", shown)
        return Reading(series, shown)

    async def publish(self, route: Route) -> None:
        return None  # every replica's /metrics is scraped: nothing to share

    async def close(self) -> None:
        await self.prometheus.close()
