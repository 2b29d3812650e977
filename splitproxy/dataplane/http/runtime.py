"""The data plane's compiled view of a routing table: pools and counters attached per version."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from splitproxy.config.models import Health
from splitproxy.dataplane.http.pool import Pool, Pools
from splitproxy.dataplane.http.shadow import Shadow, shadow_of
from splitproxy.dataplane.stats import Stats, VersionStats
from splitproxy.routing.table import RouteEntry, RoutingTable


class VersionRuntime:
    """One version of one route: its endpoints' pools, round-robin position, counters and the
    passive-health rules its endpoints are judged by (`health.record_failure`)."""

    __slots__ = ("route", "name", "pools", "stats", "synthetic_stats", "health", "_rr", "h2")

    def __init__(
        self, route: str, name: str, pools: tuple[Pool, ...], stats: Stats, health: Health
    ) -> None:
        self.route = route
        self.name = name
        self.pools = pools
        self.stats: VersionStats = stats.get(route, name)
        self.synthetic_stats: VersionStats = stats.get(route, name, synthetic=True)
        if _NO_STATS:
            self.stats = self.synthetic_stats = _Uncounted(route, name)
        self.health = health
        self._rr = 0
        # Its endpoints speak HTTP/2 only (`protocol: h2`): an HTTP/1.1 client's request is
        # bridged (`ServerState.bridge`), never sent as HTTP/1.1.
        self.h2 = bool(pools) and pools[0].endpoint.protocol == "h2"

    def next_pool(self) -> Pool | None:
        """Round robin over the endpoints neither ejected (`health`) nor failing their
        active check (`probe`)."""
        pools = self.pools
        n = len(pools)
        for _ in range(n):
            self._rr += 1
            pool = pools[self._rr % n]
            if not pool.ejected and not pool.probe_down:
                return pool
        return None


# For the benchmark only: what does counting cost? (`loadtests/bench.py` compares both.)
_NO_STATS: Final = os.environ.get("SPLITPROXY_BENCH_NO_STATS") == "1"


class _Uncounted(VersionStats):
    __slots__ = ()

    def observe(self, status: int, seconds: float, upstream: float = -1.0) -> None:
        pass


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    entry: RouteEntry
    versions: dict[str, VersionRuntime]
    cookie: bytes | None  # the sticky cookie's name
    set_cookie: dict[str, bytes]  # version -> its Set-Cookie header line, made once per table
    sticky: dict[bytes, str]  # cookie value of the current run -> version
    mirror: Shadow | None = None  # the route's shadow traffic (None: the route has none)


@dataclass(frozen=True, slots=True)
class Runtime:
    table: RoutingTable
    routes: tuple[CompiledRoute, ...]
    any_host: bool  # no route matches on host: skip host normalisation per request
    catch_all: CompiledRoute | None  # the first route matches every request: skip matching

    def match(self, host: str, path: str) -> CompiledRoute | None:
        for route in self.routes:
            if route.entry.matches(host, path):
                return route
        return None


def compile_table(table: RoutingTable, pools: Pools, stats: Stats, health: Health,
                  previous: Runtime | None = None) -> Runtime:
    """Attach pools and counters; endpoints the table no longer names start draining.

    A version whose endpoints did not change keeps its round-robin position from `previous`:
    a new table (a reload, a rollout step, a rebuild with the same weights) must not restart
    the rotation, or requests would pile on the first endpoint at every swap.
    """
    before = {(r.entry.name, name): v for r in previous.routes for name, v in r.versions.items()
              } if previous is not None else {}
    routes = []
    mirrors = {r.entry.name: r.mirror for r in previous.routes} if previous is not None else {}
    for entry in table.routes:
        versions = {}
        for name in entry.plan.versions:
            version = VersionRuntime(
                entry.name,
                name,
                tuple(pools.get(ep) for ep in entry.endpoints.get(name, ())),
                stats,
                health,
            )
            version.stats.set_limits(entry.latency_limits)
            version.synthetic_stats.set_limits(entry.latency_limits)
            old = before.get((entry.name, name))
            if old is not None and old.pools == version.pools:
                version._rr = old._rr
            versions[name] = version
        cookie = entry.cookie.encode("latin-1") if entry.cookie else None
        set_cookie = {
            version: b"Set-Cookie: %s=%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax"
            % (cookie, value, entry.cookie_max_age)
            for value, version in entry.cookie_values.items()
        } if cookie else {}
        routes.append(CompiledRoute(entry, versions, cookie, set_cookie, entry.cookie_values,
                                    shadow_of(entry, versions, stats,
                                              mirrors.get(entry.name))))
    pools.retain({ep for e in table.routes for eps in e.endpoints.values() for ep in eps})
    kept = {id(r.mirror) for r in routes}
    for shadow in mirrors.values():  # a mirror the new table does not keep: its connections
        if shadow is not None and id(shadow) not in kept:
            shadow.close()
    first = routes[0] if routes else None
    catch_all = first if first and first.entry.host is None and \
        first.entry.path_prefix == "/" else None
    return Runtime(table, tuple(routes), all(r.host is None for r in table.routes), catch_all)
