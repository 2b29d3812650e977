"""Hot-path counters per (route, version): plain integers, read by the control plane.

The data plane only increments attributes here; exporting (Prometheus) and judging (analysis)
happen elsewhere, at scrape or check time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mypy_extensions import mypyc_attr

# Upper bounds in seconds, 1 ms to 10 s, as Prometheus `le` buckets (+Inf is implicit).
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

# Upstream failure kinds, as in splitproxy_upstream_errors_total{kind}.
# "tls": the handshake with an https:// endpoint failed (certificate refused, no shared
# protocol or cipher), told apart from "connect" because the fix is a setting, not a network.
ERROR_KINDS: Final = ("connect", "timeout", "reset", "protocol", "tls")

# The proxy's own 503s: "overload" (client connections, requests waiting for an upstream
# connection, or waiting too long), "resource" (out of descriptors, buffers, memory, ports).
LOCAL_KINDS: Final = ("overload", "resource")


def bucket_of(seconds: float) -> int:
    """The histogram slot of `seconds`: the first bucket whose bound is not below it (as
    `bisect.bisect_left(LATENCY_BUCKETS, seconds)`), or the last slot, above 10 s. (NaN, which
    a difference of loop times never is, goes last; bisect would put it first.)"""
    # A scan from the smallest bound, not `bisect`: most requests end within the first few
    # buckets, and compiled, the scan is a few float comparisons where the call into `bisect`
    # costs 1,000 instructions (callgrind; interpreted, the two cost about the same).
    for i, bound in enumerate(LATENCY_BUCKETS):
        if seconds <= bound:
            return i
    return len(LATENCY_BUCKETS)


class VersionStats:
    """Counters of one version of one route; lives as long as the process.

    Two clocks: the histogram times the whole exchange as the client sees it (request head
    received to the answer's last byte handed to the client's socket), for dashboards; the
    guard's counts time the *upstream*: from the request sent to the upstream to the
    response's last byte read from it, minus the time reading was held because the client
    was slow. `timed` counts requests with an upstream time, `over[limit]` those whose upstream
    time exceeded `limit` seconds, for each limit the route's analysis sets (`set_limits`).
    """

    __slots__ = (
        "route", "version", "synthetic", "responses", "errors", "client_aborts", "in_flight",
        "latency_counts", "latency_sum", "limits", "over", "timed",
    )

    def __init__(self, route: str, version: str, synthetic: bool = False) -> None:
        self.route = route
        self.version = version
        self.synthetic = synthetic  # requests marked as synthetic load
        self.responses: dict[int, int] = {}  # status code -> count, upstream and proxy-made
        self.errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)
        self.client_aborts = 0
        self.in_flight = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # last slot: above 10 s
        self.latency_sum = 0.0
        self.limits: tuple[float, ...] = ()  # seconds, ascending (set once per table)
        self.over: dict[float, int] = {}  # limit -> requests whose upstream time exceeded it
        self.timed = 0

    def set_limits(self, limits: tuple[float, ...]) -> None:
        """The route's latency limits, ascending; counts of limits dropped by a reload stay."""
        for limit in limits:
            self.over.setdefault(limit, 0)
        self.limits = limits

    def observe(self, status: int, seconds: float, upstream: float = -1.0) -> None:
        """One answered request: `seconds` as the client saw it, `upstream` the upstream time
        (negative: none, e.g. the proxy answered without reaching the upstream)."""
        self.responses[status] = self.responses.get(status, 0) + 1
        self.latency_counts[bucket_of(seconds)] += 1
        self.latency_sum += seconds
        if upstream >= 0.0:
            self.timed += 1
            # One comparison per limit, none past the first limit not exceeded (ascending).
            for limit in self.limits:
                if upstream <= limit:
                    break
                self.over[limit] += 1

    @property
    def requests(self) -> int:
        return sum(self.responses.values())


# A worker pickles it to its parent: unpickling sets attributes one by one, which a frozen class
# compiled by mypyc refuses, so it stays a Python class in the compiled build.
@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True)
class CertificateProblem:
    """A TLS listener whose certificate files changed and do not load: the old ones serve."""

    listener: str  # its address
    error: str  # the file and the reason
    since: float  # wall clock: when the files on disk were first refused


class Stats:
    """All counters, keyed by (route, version, synthetic); created on first use and kept."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str, bool], VersionStats] = {}
        self.bad_requests = 0  # 4xx answered before a route/version was chosen
        # The proxy's own failures, by kind (LOCAL_KINDS): never any version's.
        self.local: dict[str, int] = dict.fromkeys(LOCAL_KINDS, 0)
        # Certificate sets reloaded after their files changed, by result (success, error):
        # written by the server's certificate check, not the hot path.
        self.tls_reloads: dict[str, int] = {"success": 0, "error": 0}
        # The listeners whose files on disk are refused now, by address (cleared by a set
        # that loads).
        self.tls_refused: dict[str, CertificateProblem] = {}
        # Shadow copies by (route, version copied to, result): dataplane.http.mirror.
        self.shadow: dict[tuple[str, str, str], int] = {}

    def count_local(self, kind: str) -> None:
        self.local[kind] = self.local.get(kind, 0) + 1

    def get(self, route: str, version: str, synthetic: bool = False) -> VersionStats:
        key = (route, version, synthetic)
        stats = self._by_key.get(key)
        if stats is None:
            stats = self._by_key[key] = VersionStats(route, version, synthetic)
        return stats

    def all(self) -> list[VersionStats]:
        """Counters of real traffic."""
        return [s for s in self._by_key.values() if not s.synthetic]

    def synthetic(self) -> list[VersionStats]:
        """Counters of requests marked as synthetic load."""
        return [s for s in self._by_key.values() if s.synthetic]
