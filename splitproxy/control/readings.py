"""The guard's readings: one task per guarded route and interval, delivered as events.

Only the replica that holds the rollout lease judges: it reads the route's cumulative counters
(`measure`), takes exact differences since its previous reading (`tally.CounterDiff`) and
posts a `Measurement` tagged with the run and step it was started in. The other replicas only
share their counters where the source needs them to (`FleetSource`). A reading never holds
anything else up: it has a time limit, and the owner applies its result in order with every
other event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from splitproxy.config.guard import Source
from splitproxy.config.models import Route
from splitproxy.control.clock import Clock
from splitproxy.control.sources.custom import CustomReader, Fetched
from splitproxy.control.sources.measure import (
    FleetSource,
    LocalSource,
    MeasureError,
    MetricSource,
    PromSource,
)
from splitproxy.control.stores.store import StateStore
from splitproxy.dataplane.stats import VersionStats
from splitproxy.rollout.events import Event, Measurement
from splitproxy.rollout.state import Phase, RouteState
from splitproxy.rollout.tally import CounterDiff, Series
from splitproxy.routing.table import latency_limits

log = logging.getLogger("splitproxy.rollout")

MEASURE_TIMEOUT = 10.0  # a reading that takes longer is inconclusive
# Nothing left to judge: an abort stays until a retry, and promoted is final (as Argo
# Rollouts ends analysis when a rollout completes); the last verdicts stay in /status.
_DONE = (Phase.ABORTED, Phase.PROMOTED)


def default_sources(store: StateStore,
                    counters: Callable[[], Iterable[VersionStats]]) -> dict[Source, MetricSource]:
    """`local` reads this process's counters, or every replica's when the store shares them."""
    local: MetricSource = LocalSource(counters)
    board = store.counts_board()
    if board is not None:  # replicas: the judge reads every replica's counters
        local = FleetSource(LocalSource(counters), board)
    return {Source.LOCAL: local, Source.PROMETHEUS: PromSource()}


class Readings:
    def __init__(self, store: StateStore, clock: Clock, sources: dict[Source, MetricSource],
                 post: Callable[[str, Event], None],
                 current: Callable[[], tuple[dict[str, Route], dict[str, RouteState]]]) -> None:
        self.store = store
        self.clock = clock
        self.sources = sources
        self._post = post  # hands an event for a route to the owner
        self._current = current  # the owner's routes and states
        self.queries: dict[str, dict[str, Any]] = {}  # route -> last PromQL and its error
        self.judging = False  # held the lease at the last tick
        # Per route: counters as of the last reading, and their generation (a new run or a
        # new judge starts a new one: a reading of an older generation counts for nothing).
        self._diffs: dict[str, CounterDiff] = {}
        self._generation: dict[str, int] = {}
        self._failing: set[str] = set()  # routes whose last reading failed (logged once)
        self._next: dict[str, float] = {}  # monotonic time of the next reading
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.custom = CustomReader()  # analysis.metrics, read beside the counters

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    def due(self, name: str, mono: float) -> None:
        self._next[name] = mono

    def new_run(self, name: str) -> None:
        """A new run: judge only what happens from now on. The next reading, at once, only
        sets the starting point of the counts."""
        self._generation[name] = self._generation.get(name, 0) + 1
        self._diffs.pop(name, None)
        self.custom.reset(name)
        self.forget(name)
        self._next[name] = self.clock.monotonic()

    def forget(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for source in self.sources.values():
            await source.close()
        await self.custom.close()

    def start(self, mono: float) -> None:
        """The readings due at `mono` (called on every timer tick)."""
        judging = self.store.is_leader()
        if judging and not self.judging:
            # Another replica judged meanwhile: count from now, never what it counted.
            self._diffs.clear()
            self.custom.reset_all()
            self._generation = {n: g + 1 for n, g in self._generation.items()}
        self.judging = judging
        routes, states = self._current()
        for name, route in routes.items():
            analysis = route.analysis
            state = states.get(name)
            if analysis is None or state is None or state.phase in _DONE:
                continue
            if name in self._tasks or mono + 1e-6 < self._next.get(name, 0.0):
                continue
            self._next[name] = mono + analysis.interval
            if judging:
                work = self._read(name, route, state.run, state.step,
                                  self._generation.setdefault(name, 0))
            else:
                work = self._publish(name, route)
            self._tasks[name] = asyncio.get_running_loop().create_task(work)

    def _done(self, name: str) -> None:
        if self._tasks.get(name) is asyncio.current_task():
            del self._tasks[name]

    async def _read(self, name: str, route: Route, run: str, step: int,
                    generation: int) -> None:
        assert route.analysis is not None
        try:
            (series, queries, error), fetched = await asyncio.gather(
                self._counters(route), self._custom(route))
        finally:
            self._done(name)
        if self._generation.get(name, 0) != generation:
            return  # a new run (or judge) began meanwhile: this reading counts for nothing
        if queries is not None or route.analysis.source != Source.LOCAL:
            self.queries[name] = {"queries": queries or {}, "error": error}
        tallies = None
        if series is not None:
            diff = self._diffs.setdefault(name, CounterDiff())
            tallies = diff.apply(series, latency_limits(route), self.clock.monotonic())
        self._note_failure(name, "analysis inconclusive", error)
        custom = self.custom.samples(route, fetched, self.clock.monotonic())
        for metric, sample in custom.items():
            self._note_failure(name, "analysis inconclusive", sample.error, metric)
        self._post(name, Measurement(run, step, tallies, error, leader=self.store.is_leader(),
                                     custom=custom))

    async def _counters(self, route: Route) -> tuple[dict[Series, float] | None,
                                                     dict[str, str] | None, str | None]:
        """(the route's cumulative counters, the queries shown, the error) from its source."""
        assert route.analysis is not None
        source = self.sources[route.analysis.source]
        try:
            reading = await asyncio.wait_for(source.read(route), MEASURE_TIMEOUT)
            return reading.series, reading.queries, None
        except MeasureError as exc:
            return None, exc.queries, str(exc)
        except TimeoutError:
            return None, None, f"no reading within {MEASURE_TIMEOUT:g}s"

    async def _custom(self, route: Route) -> dict[str, Fetched]:
        """analysis.metrics from Prometheus; a reading that takes too long reads as failed."""
        try:
            return await asyncio.wait_for(self.custom.fetch(route, self.clock.time()),
                                          MEASURE_TIMEOUT)
        except TimeoutError:
            analysis = route.analysis
            metrics = analysis.metrics if analysis is not None else ()
            return {m.name: Fetched({}, error=f"no reading within {MEASURE_TIMEOUT:g}s")
                    for m in metrics}

    async def _publish(self, name: str, route: Route) -> None:
        assert route.analysis is not None
        error = None
        try:
            await asyncio.wait_for(self.sources[route.analysis.source].publish(route),
                                   MEASURE_TIMEOUT)
        except (MeasureError, TimeoutError) as exc:
            error = str(exc) or f"no answer within {MEASURE_TIMEOUT:g}s"
        finally:
            self._done(name)
        self._note_failure(name, "counters not shared", error)

    def _note_failure(self, name: str, what: str, error: str | None,
                      metric: str | None = None) -> None:
        """One log line when a route's readings (or one custom metric's) start failing and one
        when they work again (each check keeps its own error in the history)."""
        key, which = (name, "") if metric is None else (f"{name}|{metric}", f" metric={metric}")
        if error is not None and key not in self._failing:
            self._failing.add(key)
            log.warning("rollout route=%s%s %s: %s", name, which, what, error)
        elif error is None and key in self._failing:
            self._failing.discard(key)
            log.info("rollout route=%s%s readings work again", name, which)
