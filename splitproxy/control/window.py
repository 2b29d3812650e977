"""Sliding windows over cumulative per-version counters: "what happened in the last N seconds".

The control plane samples every version's counters once a second; a window is the difference
between the newest sample and the newest one at least N seconds old. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from splitproxy.dataplane.stats import LATENCY_BUCKETS, VersionStats

Key = tuple[str, str, bool]  # (route, version, synthetic)


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative counts of one version at one moment."""

    requests: int = 0
    errors: int = 0  # 5xx answers, the upstream's and the proxy's own 502/503/504
    latency: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative

    @classmethod
    def of(cls, stats: VersionStats) -> Sample:
        requests = errors = 0
        for code, n in stats.responses.items():
            requests += n
            if code >= 500:
                errors += n
        return cls(requests, errors, tuple(stats.latency_counts))

    def __add__(self, other: Sample) -> Sample:
        return Sample(
            self.requests + other.requests,
            self.errors + other.errors,
            tuple(a + b for a, b in zip(self.latency, other.latency, strict=True)),
        )

    def __sub__(self, older: Sample) -> Sample:
        return Sample(
            self.requests - older.requests,
            self.errors - older.errors,
            tuple(a - b for a, b in zip(self.latency, older.latency, strict=True)),
        )

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def quantile(self, q: float) -> float | None:
        """Latency quantile in seconds, interpolated inside its bucket as Prometheus'
        histogram_quantile does; None without requests."""
        total = sum(self.latency)
        if not total:
            return None
        rank = q * total
        seen = 0
        lower = 0.0
        for i, count in enumerate(self.latency):
            upper = LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else LATENCY_BUCKETS[-1]
            if count and seen + count >= rank:
                return lower + (upper - lower) * (rank - seen) / count
            seen += count
            lower = upper
        return LATENCY_BUCKETS[-1]


class Window:
    """Samples of every version over the last `horizon` seconds, one per `record` call."""

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self._samples: deque[tuple[float, dict[Key, Sample]]] = deque()

    def record(self, now: float, samples: dict[Key, Sample]) -> None:
        self._samples.append((now, samples))
        # Keep one sample older than the horizon so a full window always has a start.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.horizon:
            self._samples.popleft()

    def delta(self, now: float, seconds: float) -> dict[Key, Sample]:
        """What each version did in the last `seconds` (less while the history is shorter)."""
        if not self._samples:
            return {}
        newest = self._samples[-1][1]
        start: dict[Key, Sample] = {}
        for t, samples in reversed(self._samples):
            start = samples
            if t <= now - seconds:
                break
        return {key: sample - start.get(key, Sample()) for key, sample in newest.items()}

    def span(self, now: float, seconds: float) -> float:
        """How many seconds of history `delta(now, seconds)` actually covers."""
        if not self._samples:
            return 0.0
        oldest = self._samples[0][0]
        for t, _ in reversed(self._samples):
            oldest = t
            if t <= now - seconds:
                break
        return self._samples[-1][0] - oldest
