"""Exact counts between two readings: what the guard judges, per version and tick.

Every source hands over *cumulative* counters, one value per series: a version's counter in
this process, one Prometheus series (a replica, a status code), one replica's counters shared
through Redis. `CounterDiff` keeps the last value of each series and turns the next reading
into per-version counts (`Tally`), exactly:

- a series that went down was reset (its process restarted): its new value is all new;
- a series seen for the first time counts from 0 (a replica that started, a status code that
  appeared) -- except in the first reading after `reset`, which only sets the starting point;
- a series missing from a reading adds nothing and keeps its last value, so one that comes
  back (a missed scrape, an expired key refreshed) is not counted twice.

`increase()` in PromQL would extrapolate to the window's edges and count overlapping windows
twice; differences of raw counters do neither. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

REQUESTS, ERRORS, TIMED = "requests", "errors", "timed"
FORGET_AFTER = 86400.0  # a series unseen for a day is forgotten (pods come and go)

Series = tuple[str, str, str]  # (version, metric, which series: process, replica, labels)


def slow_metric(limit: float) -> str:
    """The metric name of "requests whose upstream time exceeded `limit` seconds"."""
    return f"over:{limit!r}"


@dataclass(frozen=True, slots=True)
class Tally:
    """One version's counts over one tick: requests answered, 5xx among them, requests with an
    upstream time, and per latency limit (seconds) those timed over it."""

    requests: int = 0
    errors: int = 0
    timed: int = 0
    over: Mapping[float, int] = field(default_factory=dict)

    def slow(self, limit: float) -> int:
        return self.over.get(limit, 0)

    def to_json(self) -> dict[str, object]:
        return {"requests": self.requests, "errors": self.errors, "timed": self.timed,
                "over": {repr(k): v for k, v in self.over.items()}}


class Counters(Protocol):
    """One version's cumulative counters as a data plane keeps them (`dataplane.stats`); a
    protocol so that this pure module does not import the data plane."""

    route: str
    version: str
    synthetic: bool
    timed: int

    @property
    def responses(self) -> Mapping[int, int]: ...

    @property
    def over(self) -> Mapping[float, int]: ...


def series_of(stats: Iterable[Counters], route: str, limits: Iterable[float],
              synthetic: bool, source: str = "") -> dict[Series, float]:
    """The cumulative series of `route` in these counters (synthetic ones too if asked)."""
    limits = tuple(limits)
    out: dict[Series, float] = {}
    for s in stats:
        if s.route != route or (s.synthetic and not synthetic):
            continue
        which = f"{source}|synthetic" if s.synthetic else source
        requests = errors = 0
        for code, n in s.responses.items():
            requests += n
            if code >= 500:
                errors += n
        out[(s.version, REQUESTS, which)] = requests
        out[(s.version, ERRORS, which)] = errors
        out[(s.version, TIMED, which)] = s.timed
        for limit in limits:
            out[(s.version, slow_metric(limit), which)] = s.over.get(limit, 0)
    return out


class CounterDiff:
    """Per-series memory of one route's counters; `apply` answers the counts since the last
    reading it was given."""

    def __init__(self) -> None:
        self._last: dict[Series, tuple[float, float]] = {}  # series -> (value, seen at)
        self._primed = False

    def reset(self) -> None:
        """Forget everything: the next reading only sets the starting point."""
        self._last.clear()
        self._primed = False

    def apply(self, reading: Mapping[Series, float], limits: Iterable[float],
              now: float) -> dict[str, Tally]:
        """Counts per version since the previous reading (all zero for the first one)."""
        limits = tuple(limits)
        sums = self.deltas(reading, now)
        versions = {v for v, _ in sums}
        return {v: Tally(
            requests=round(sums.get((v, REQUESTS), 0.0)),
            errors=round(sums.get((v, ERRORS), 0.0)),
            timed=round(sums.get((v, TIMED), 0.0)),
            over={lim: round(sums.get((v, slow_metric(lim)), 0.0)) for lim in limits},
        ) for v in versions}

    def deltas(self, reading: Mapping[Series, float], now: float) -> dict[tuple[str, str], float]:
        """What each (version, metric) counted since the previous reading, summed over its
        series (all zero for the first reading): `apply`'s arithmetic, for any counters."""
        sums: dict[tuple[str, str], float] = {}
        first = not self._primed
        for key, value in reading.items():
            seen = self._last.get(key)
            if seen is None:
                delta = 0.0 if first else value
            elif value >= seen[0]:
                delta = value - seen[0]
            else:
                delta = value  # a reset: counting started again from 0
            self._last[key] = (value, now)
            sums[key[:2]] = sums.get(key[:2], 0.0) + delta
        self._primed = True
        for key in [k for k, (_, at) in self._last.items() if now - at > FORGET_AFTER]:
            del self._last[key]
        return sums
