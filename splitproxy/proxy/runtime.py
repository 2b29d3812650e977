"""The data plane's compiled view of a routing table: pools and counters attached per version."""

from __future__ import annotations

from dataclasses import dataclass

from splitproxy.proxy.upstream import Pool, Pools, UpstreamConnection
from splitproxy.stats import Stats, VersionStats
from splitproxy.table import RouteEntry, RoutingTable


class VersionRuntime:
    """One version of one route: its endpoints' pools, round-robin position and counters."""

    __slots__ = ("name", "pools", "stats", "_rr")

    def __init__(self, name: str, pools: tuple[Pool, ...], stats: VersionStats) -> None:
        self.name = name
        self.pools = pools
        self.stats = stats
        self._rr = 0

    def next_pool(self) -> Pool | None:
        pools = self.pools
        if not pools:
            return None
        self._rr += 1
        return pools[self._rr % len(pools)]

    def record_failure(self, conn: UpstreamConnection | None, kind: str) -> None:
        """Hook for passive health checking; counting is done by the caller."""


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    entry: RouteEntry
    versions: dict[str, VersionRuntime]
    cookie_prefix: bytes | None  # b"name=" of the sticky cookie, for Set-Cookie


@dataclass(frozen=True, slots=True)
class Runtime:
    table: RoutingTable
    routes: tuple[CompiledRoute, ...]
    any_host: bool  # no route matches on host: skip host normalisation per request

    def match(self, host: str, path: str) -> CompiledRoute | None:
        for route in self.routes:
            if route.entry.matches(host, path):
                return route
        return None


def compile_table(table: RoutingTable, pools: Pools, stats: Stats) -> Runtime:
    routes = []
    for entry in table.routes:
        versions = {
            name: VersionRuntime(
                name,
                tuple(pools.get(ep) for ep in entry.endpoints.get(name, ())),
                stats.get(entry.name, name),
            )
            for name in entry.plan.versions
        }
        prefix = entry.cookie.encode("latin-1") + b"=" if entry.cookie else None
        routes.append(CompiledRoute(entry, versions, prefix))
    return Runtime(table, tuple(routes), all(r.host is None for r in table.routes))
