"""What the control process and its worker processes say to each other over their pipe:
frozen dataclasses, pickled by multiprocessing. The parent sends `Table` and `Stop`; a worker
sends `Ready`, then a `Report` four times a second, and `Stopped` when it is done."""

from __future__ import annotations

from dataclasses import dataclass, field

from splitproxy.config.headerroute import HeaderRoute
from splitproxy.config.mirror import Mirror
from splitproxy.config.models import Config
from splitproxy.dataplane.plane import EndpointHealth
from splitproxy.dataplane.procstats import Usage
from splitproxy.dataplane.stats import CertificateProblem, Stats, VersionStats
from splitproxy.routing import table

Weights = dict[str, dict[str, float]]  # route -> version -> weight


# -- control process -> worker ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Table:
    """A routing table as the worker rebuilds it: the config, the generation, the effective
    weights, each route's rollout run (sticky cookies must name it in every worker), the
    header routes of its current step and the shadow traffic in force (a `set_mirror` step
    may differ from the config's `mirror`)."""

    config: Config
    generation: int
    weights: Weights
    runs: dict[str, str]
    header_routes: dict[str, tuple[HeaderRoute, ...]]
    mirrors: dict[str, Mirror | None] = field(default_factory=dict)

    @classmethod
    def of(cls, config: Config, routing: table.RoutingTable) -> Table:
        return cls(
            config,
            routing.generation,
            {r.name: dict(zip(r.plan.versions, r.plan.weights, strict=True))
             for r in routing.routes},
            {r.name: r.run for r in routing.routes},
            {r.name: r.header_routes for r in routing.routes if r.header_routes},
            {r.name: r.mirror for r in routing.routes},
        )

    def build(self) -> table.RoutingTable:
        return table.build(self.config, self.generation, self.weights, self.runs,
                           self.header_routes, self.mirrors)


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop accepting and drain for up to `drain` seconds, then exit."""

    drain: float


# -- worker -> control process ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ready:
    port: int


@dataclass(frozen=True, slots=True)
class Counters:
    """One `VersionStats` as plain data."""

    route: str
    version: str
    synthetic: bool
    responses: dict[int, int]
    errors: dict[str, int]
    client_aborts: int
    in_flight: int
    latency_counts: list[int]
    latency_sum: float
    timed: int
    over: dict[float, int]

    @classmethod
    def of(cls, s: VersionStats) -> Counters:
        return cls(s.route, s.version, s.synthetic, dict(s.responses), dict(s.errors),
                   s.client_aborts, s.in_flight, list(s.latency_counts), s.latency_sum, s.timed,
                   dict(s.over))

    def add_to(self, into: VersionStats) -> None:
        for code, n in self.responses.items():
            into.responses[code] = into.responses.get(code, 0) + n
        for kind, n in self.errors.items():
            into.errors[kind] = into.errors.get(kind, 0) + n
        into.client_aborts += self.client_aborts
        into.in_flight += self.in_flight
        into.latency_counts = [a + b for a, b in zip(into.latency_counts, self.latency_counts,
                                                     strict=True)]
        into.latency_sum += self.latency_sum
        into.timed += self.timed
        for limit, n in self.over.items():
            into.over[limit] = into.over.get(limit, 0) + n


@dataclass(frozen=True, slots=True)
class Report:
    """A worker's counters, endpoint health and resource use, whole each time (not
    increments)."""

    counters: tuple[Counters, ...]
    bad_requests: int
    local: dict[str, int]
    health: tuple[EndpointHealth, ...]
    usage: Usage | None = None  # its memory, CPU and descriptors (None: no /proc)
    tls_reloads: dict[str, int] = field(default_factory=dict)  # certificate reloads
    shadow: dict[tuple[str, str, str], int] = field(default_factory=dict)  # mirror results
    # listener -> its certificate files refused now (a state, not a count)
    tls_refused: dict[str, CertificateProblem] = field(default_factory=dict)

    @classmethod
    def of(cls, stats: Stats, health: list[EndpointHealth], usage: Usage | None = None
           ) -> Report:
        return cls(tuple(Counters.of(s) for s in (*stats.all(), *stats.synthetic())),
                   stats.bad_requests, dict(stats.local), tuple(health), usage,
                   dict(stats.tls_reloads), dict(stats.shadow), dict(stats.tls_refused))


@dataclass(frozen=True, slots=True)
class Stopped:
    pass


ToWorker = Table | Stop
FromWorker = Ready | Report | Stopped
