"""Config + rollout state -> an immutable routing table the data plane swaps in whole."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Final

from splitproxy.config.address import EndpointUrl
from splitproxy.config.headerroute import HeaderRoute
from splitproxy.config.mirror import Mirror
from splitproxy.config.models import Config, Route, Strategy
from splitproxy.config.tls import UpstreamTls
from splitproxy.routing.choose import RoutePlan, make_plan, pin_values, sticky_value
from splitproxy.routing.steer import Rule, compile_rules

NO_RUN: Final = "0"  # the run of a table built without rollout state (no engine: tests, tools)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    tls: UpstreamTls | None = None  # an https:// endpoint: how it is reached
    # How it is spoken to: "http1", "h2" or "auto" (h2 if ALPN picks it); the version's
    # `protocol`. Part of the key: a changed protocol is a new pool.
    protocol: str = "http1"

    @property
    def key(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def name(self) -> str:
        """How reports tell endpoints apart: `host:port` for http:// (as it always was),
        the URL for https://, so an http and an https endpoint on one host:port never share
        a row, a metric series or a worker's merged health."""
        return f"https://{self.key}" if self.tls is not None else self.key

    @property
    def url(self) -> str:
        return f"https://{self.key}" if self.tls is not None else f"http://{self.key}"

    @classmethod
    def of(cls, url: EndpointUrl, tls: UpstreamTls | None = None,
           protocol: str = "http1") -> Endpoint:
        if not url.secure:
            return cls(url.address.host, url.address.port, None, protocol)
        return cls(url.address.host, url.address.port, tls or DEFAULT_UPSTREAM_TLS, protocol)


DEFAULT_UPSTREAM_TLS: Final = UpstreamTls()


@dataclass(frozen=True, slots=True)
class RouteEntry:
    name: str
    host: str | None  # lower-case, no port
    path_prefix: str
    plan: RoutePlan
    endpoints: dict[str, tuple[Endpoint, ...]]  # version -> endpoints
    pin_header: bytes | None  # lower-case header names, as the parser hands them over
    pins: dict[bytes, str]  # the pin header values honoured -> version
    hash_header: bytes | None
    cookie: str | None
    run: str  # the rollout run; a sticky cookie of another run is ignored
    cookie_values: dict[bytes, str]  # sticky cookie value of this run -> version
    cookie_max_age: int  # seconds
    synthetic_header: bytes | None  # marks synthetic load (counted apart), with analysis only
    latency_limits: tuple[float, ...]  # seconds, ascending: the analysis' max_pNN_ms, counted
    preview_header: bytes | None  # blue-green: requests carrying it reach `preview_version`
    preview_token: bytes | None  # ... only when its value is this (sticky.pin_token)
    preview_version: str | None
    # The header/cookie routes of the rollout's current step, as configured and compiled.
    header_routes: tuple[HeaderRoute, ...]
    steer_rules: tuple[Rule, ...]
    # Feeds the weighted sequence; shared by every request of this route in this table.
    counter: itertools.count[int] = field(default_factory=itertools.count)
    # A verified client certificate's subject -> version (sticky.identity_pins, mTLS).
    identity_pins: dict[bytes, str] = field(default_factory=dict)
    mirror: Mirror | None = None  # shadow traffic (dataplane.http.mirror)
    # grpc-status values that count as errors of the version (routes[].grpc.error_codes).
    grpc_error_codes: frozenset[int] = frozenset()

    def matches(self, host: str, path: str) -> bool:
        if self.host is not None and host != self.host:
            return False
        return path.startswith(self.path_prefix)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    generation: int
    routes: tuple[RouteEntry, ...]  # in config order: the first that matches answers


def _lower(name: str | None) -> bytes | None:
    return name.lower().encode("latin-1") if name else None


def build_route(
    route: Route, weights: dict[str, float] | None = None, run: str = NO_RUN,
    header_routes: tuple[HeaderRoute, ...] = (),
    mirror: Mirror | None | EllipsisType = ...,
) -> RouteEntry:
    """`weights`: the effective weights (a rollout's), when they differ from the config's;
    `run`: the rollout run sticky cookies must name; `header_routes`: those of the rollout's
    current step (their requests go to the canary); `mirror`: the shadow traffic in force (a
    rollout's `set_mirror` step; None: none), `...`: the route's own."""
    versions = tuple(route.versions)
    sticky = route.sticky
    token = sticky.pin_token
    if weights is None:
        weights = route.configured_weights
    preview = None
    if route.strategy == Strategy.BLUE_GREEN:
        preview = next((v for v in versions if weights.get(v, 0) == 0), None)
    return RouteEntry(
        name=route.name,
        host=route.match.host.lower() if route.match.host else None,
        path_prefix=route.match.path_prefix,
        plan=make_plan(route.name, versions, weights, baseline=route.baseline,
                       canary=route.canary if header_routes else None),
        endpoints={
            v: tuple(Endpoint.of(url, cfg.tls, cfg.protocol.value) for url in cfg.endpoints)
            for v, cfg in route.versions.items()
        },
        pin_header=_lower(sticky.pin_header),
        pins=pin_values(versions, token) if sticky.pin_header else {},
        hash_header=_lower(sticky.hash_header),
        cookie=sticky.cookie,
        run=run,
        cookie_values={sticky_value(v, run).encode("latin-1"): v for v in versions},
        cookie_max_age=max(1, math.ceil(sticky.cookie_max_age)),
        grpc_error_codes=frozenset(int(code) for code in route.grpc.error_codes),
        synthetic_header=_lower(route.analysis.synthetic_header) if route.analysis else None,
        latency_limits=latency_limits(route),
        preview_header=_lower(route.preview_header) if preview is not None else None,
        preview_token=token.encode("latin-1") if token else None,
        preview_version=preview,
        header_routes=header_routes,
        steer_rules=compile_rules(header_routes),
        identity_pins={k.encode("utf-8"): v for k, v in sticky.identity_pins.items()},
        mirror=route.mirror if mirror is ... else mirror,
    )


def latency_limits(route: Route) -> tuple[float, ...]:
    """The upstream-time limits counted per request for `route`, in seconds, ascending."""
    analysis = route.analysis
    if analysis is None:
        return ()
    return tuple(sorted({seconds for _, seconds, _ in analysis.latency_limits()}))


def build(
    config: Config, generation: int = 1, weights: dict[str, dict[str, float]] | None = None,
    runs: dict[str, str] | None = None,
    header_routes: dict[str, tuple[HeaderRoute, ...]] | None = None,
    mirrors: dict[str, Mirror | None] | None = None,
) -> RoutingTable:
    """The table for a config; `weights` per route name overrides the configured weights,
    `runs` names each route's rollout run, `header_routes` its current step's header routes,
    `mirrors` its shadow traffic in force (a route left out: its own `mirror`)."""
    weights = weights or {}
    runs = runs or {}
    header_routes = header_routes or {}
    mirrors = mirrors or {}
    return RoutingTable(generation, tuple(
        build_route(r, weights.get(r.name), runs.get(r.name, NO_RUN),
                    header_routes.get(r.name, ()), mirrors.get(r.name, ...))
        for r in config.routes))
