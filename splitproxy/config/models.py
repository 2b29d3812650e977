"""Typed configuration: the models of the one YAML file, and `load(path)`.

`load(path)` returns a frozen `Config` or raises `ConfigError` whose message names the file, the
line and the field path (``config.yaml:12: routes[0].weights.canary: must be >= 0``); the YAML
and error-location work is in `yamlload`; the value types in `units`, the guard's settings in
`guard`, a rollout's in `steps`. No code below `load()` sees a raw dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    PlainValidator,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from splitproxy.config.address import HostPort
from splitproxy.config.crossfield import (
    UNKNOWN,
    RolloutFacts,
    RouteFacts,
    address_problems,
    recheck,
    route_name_problems,
    route_problems,
    weight_problems,
)
from splitproxy.config.grpc import Grpc, UpstreamProtocol
from splitproxy.config.guard import Analysis
from splitproxy.config.healthcheck import HealthCheck
from splitproxy.config.mirror import Mirror
from splitproxy.config.steps import PreSwitch, Rollout
from splitproxy.config.tls import (
    Listener,
    Listeners,
    UpstreamTls,
    listener_problems,
    listeners_text,
)
from splitproxy.config.units import (
    TOKEN,
    Duration,
    Endpoint,
    Frozen,
    HostName,
    Listen,
    Name,
    PathPrefix,
    Positive,
    Size,
    Timeout,
    Token,
    Weight,
    parse_duration,
)
from splitproxy.config.yamlload import ConfigError as ConfigError
from splitproxy.config.yamlload import Located, Problem, load_model

LogFormat = Literal["text", "json"]


class Strategy(StrEnum):
    CANARY = "canary"  # weights, moved by rollout steps
    BLUE_GREEN = "blue-green"  # one `active` color takes everything


class Backend(StrEnum):
    """Where rollout state lives (`state.backend`)."""

    FILE = "file"
    REDIS = "redis"


class AdminConfig(Frozen):
    listen: Listen = HostPort("127.0.0.1:9901")
    # A file holding the bearer token; required when `listen` is not a loopback address
    # (SPLITPROXY_ADMIN_TOKEN in the environment does as well). Re-read when it changes.
    token_file: str | None = None
    # /metrics asks for the token too (off: Prometheus' usual pod scrape carries none).
    metrics_auth: bool = False
    # Host names the admin API answers to besides IP literals, localhost and the listen
    # host (DNS rebinding: a page on a name of its own must not reach the API through it).
    allowed_hosts: tuple[HostName, ...] = ()


class Logging(Frozen):
    # text: for a terminal; json: one object per line, for a log pipeline. `splitproxy run
    # --log-format` wins. Read at start-up.
    format: LogFormat = "text"
    # One line per request on the `splitproxy.access` logger (README: Metrics); a reload
    # applies it to connections opened after it.
    access_log: bool = False


class Match(Frozen):
    host: HostName | None = None  # exact, case-insensitive
    path_prefix: PathPrefix = "/"


def _pin_token(value: str | None) -> str | None:
    if value is not None and not TOKEN.fullmatch(value):
        raise ValueError("use only letters, digits and !#$%&'*+.^_`|~- (no spaces or ':')")
    if value is not None and len(value) < 16:
        raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 16`)")
    return value


class Sticky(Frozen):
    """How a request may choose or keep its version (the order is in `routing`)."""

    # Off unless set: at the edge anyone can send a header.
    pin_header: Token = None
    # When set, a pin (and blue-green's preview header) is honoured only with this secret:
    # `<pin_header>: <version>:<pin_token>`, `<preview_header>: <pin_token>`.
    pin_token: Annotated[str | None, AfterValidator(_pin_token)] = None
    hash_header: Token = None
    cookie: Token = None
    # The cookie names the version and the rollout run; it also expires after this long.
    cookie_max_age: Annotated[Duration, Field(gt=0)] = 86400.0
    # mTLS: a verified client certificate's subject (as sent in X-Client-Cert-Subject) ->
    # the version it always reaches, before any other rule.
    identity_pins: dict[str, Name] = {}


class VersionConfig(Frozen):
    endpoints: tuple[Endpoint, ...] = Field(min_length=1)
    tls: UpstreamTls | None = None  # for its https:// endpoints (default: verified, system CAs)
    health_check: HealthCheck | None = None  # active probes (default: the route's)
    # How its endpoints are spoken to: http1, h2 (prior knowledge on http://, ALPN h2 on
    # https://) or auto (https:// only: h2 when ALPN picks it, else HTTP/1.1).
    protocol: UpstreamProtocol = UpstreamProtocol.HTTP1

    @model_validator(mode="after")
    def _auto_needs_tls(self) -> VersionConfig:
        if self.protocol == UpstreamProtocol.AUTO:
            plain = [e for e in self.endpoints if not e.secure]
            if plain:
                raise Located([(("protocol",), "auto chooses by TLS ALPN: only for https:// "
                                f"endpoints, not {plain[0]} (use h2 or http1)")])
        return self


class Route(Frozen):
    name: Name
    match: Match = Match()
    versions: dict[Name, VersionConfig] = Field(min_length=1)
    # Declared before `weights`: its validator needs to know the strategy.
    strategy: Strategy = Strategy.CANARY
    # Every key a version; each >= 0; total > 0. Required for canary, unused by blue-green.
    weights: dict[str, Weight] | None = Field(default=None, validate_default=True)
    sticky: Sticky = Sticky()
    active: Name | None = None  # blue-green: the color that takes traffic
    # Blue-green: a request carrying it reaches the other color. Off unless set, as the pin.
    preview_header: Token = None
    analysis: Analysis | None = None
    rollout: Rollout | None = None
    # Blue-green: a change of `active` is validated first (README: Blue/green).
    pre_switch: PreSwitch | None = None
    health_check: HealthCheck | None = None  # active probes of every version without its own
    mirror: Mirror | None = None  # shadow traffic to a version (README: Shadow traffic)
    grpc: Grpc = Grpc()  # which grpc-status codes count as errors (README: HTTP/2 and gRPC)

    @field_validator("weights")
    @classmethod
    def _known_versions(
        cls, weights: dict[str, float] | None, info: ValidationInfo
    ) -> dict[str, float] | None:
        versions = info.data.get("versions")
        known = UNKNOWN if versions is None else tuple(versions)  # None: reported already
        if problems := weight_problems(known, info.data.get("strategy", "canary"), weights):
            raise Located(problems)
        return weights

    @model_validator(mode="after")
    def _strategy_fields(self) -> Route:
        ro = self.rollout
        rollout = None if ro is None else RolloutFacts(ro.canary,
                                                       bool(ro.steps or ro.window or ro.canary))
        baseline = self.analysis.baseline if self.analysis is not None else None
        facts = RouteFacts(tuple(self.versions), self.strategy, self.active, baseline, rollout)
        if problems := route_problems(facts):
            raise Located(problems)
        if self.pre_switch is not None:
            if self.strategy != Strategy.BLUE_GREEN:
                raise Located([(("pre_switch",), "only for strategy blue-green")])
            if self.pre_switch.analysis and self.analysis is None:
                raise Located([(("pre_switch", "analysis"),
                                "judges with the route's `analysis`: configure one")])
        return self

    @model_validator(mode="after")
    def _identity_pins(self) -> Route:
        problems: list[Problem] = [
            (("sticky", "identity_pins", who), f"unknown version {version!r}")
            for who, version in self.sticky.identity_pins.items()
            if version not in self.versions]
        if self.mirror is not None and self.mirror.to not in self.versions:
            problems.append((("mirror", "to"), f"unknown version {self.mirror.to!r}"))
        if problems:
            raise Located(problems)
        return self

    @model_validator(mode="after")
    def _mirror_needs_http1(self) -> Route:
        # A mirrored request and its copy go over HTTP/1.1 (`dataplane.http.mirror`): an
        # HTTP/2 version would get an HTTP/1.1 head it cannot read.
        where: list[tuple[str | int, ...]] = [("mirror",)] if self.mirror is not None else []
        if self.rollout is not None:
            where += [("rollout", "steps", i, "set_mirror")
                      for i, step in enumerate(self.rollout.steps)
                      if step.set_mirror is not None and step.set_mirror.percent > 0]
        h2 = [(n, v.protocol) for n, v in self.versions.items()
              if v.protocol != UpstreamProtocol.HTTP1]
        if where and h2:
            name, protocol = h2[0]
            raise Located([(where[0], "shadow traffic goes over HTTP/1.1: version "
                            f"{name} has protocol {protocol} (mirror only routes whose "
                            "versions all speak http1)")])
        return self

    @model_validator(mode="after")
    def _grpc_probes_need_h2(self) -> Route:
        problems: list[Problem] = []
        for name, version in self.versions.items():
            check = version.health_check or self.health_check
            if check is None or check.grpc_service is None \
                    or version.protocol != UpstreamProtocol.HTTP1:
                continue
            where: tuple[str, ...] = ("versions", name, "health_check", "grpc_service")
            if version.health_check is None:
                where = ("health_check", "grpc_service")
            problems.append((where, f"a gRPC health check needs HTTP/2: version {name} has "
                                    "protocol http1 (set protocol: h2)"))
        if problems:
            raise Located(problems)
        return self

    @property
    def configured_weights(self) -> dict[str, float]:
        """Weights as configured: blue-green gives the active color everything."""
        if self.weights is not None:
            return {v: self.weights.get(v, 0) for v in self.versions}
        return {v: 100 if v == self.active else 0 for v in self.versions}

    @property
    def baseline(self) -> str:
        """Takes all traffic on abort: analysis.baseline, else the first version listed."""
        if self.analysis is not None and self.analysis.baseline is not None:
            return self.analysis.baseline
        if self.strategy == Strategy.BLUE_GREEN and self.active is not None:
            return self.active
        return next(iter(self.versions))

    @property
    def canary(self) -> str | None:
        """The version a rollout's steps weigh."""
        if self.rollout is not None and self.rollout.canary is not None:
            return self.rollout.canary
        return next((v for v in self.versions if v != self.baseline), None)


class Timeouts(Frozen):
    connect: Timeout = 2.0
    response_header: Timeout = 30.0
    client_header: Timeout = 10.0
    # Between two reads of a request body (nginx client_body_timeout, 60 s): 408.
    client_body: Timeout = 60.0
    # Between two reads of a response after its head (nginx proxy_read_timeout, 60 s): 504,
    # or a cut answer once it began; a timeout of the version.
    upstream_read: Timeout = 60.0
    # Between two writes the client accepts while output waits for it (nginx send_timeout,
    # 60 s): the client's connection is cut and the upstream one closed; a client abort.
    client_send: Timeout = 60.0
    # How long a request may wait for an upstream connection when every connection attempt
    # slot is taken: 503 with Retry-After, the proxy's own.
    pool_wait: Timeout = 5.0
    idle: Timeout = 60.0
    drain: Timeout = 30.0  # graceful shutdown: how long in-flight requests may finish




class Limits(Frozen):
    max_header: Annotated[Size, Field(ge=1024)] = 64 * 1024
    max_body: Size | None = None
    # A larger upstream response head is a 502 (nginx: proxy_buffer_size, 4-8 KiB; Envoy:
    # max_response_headers_kb, 60 KiB).
    max_response_header: Annotated[Size, Field(ge=1024)] = 64 * 1024
    # Request bodies up to this size are read whole before an upstream connection is taken
    # (0: stream every body at once).
    body_buffer: Size = 64 * 1024
    # Overload: more client connections get 503 at once; more requests waiting for an
    # upstream connection get 503 at once.
    max_connections: Positive = 10000
    max_pending: Positive = 1024


def _busy_poll(value: object) -> float | Literal["auto"]:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"expected auto, 0s (off) or a duration up to 1ms, got {value!r}") from exc
    if seconds > 0.001:
        given = value.strip() if isinstance(value, str) else f"{value} (a bare number is seconds)"
        raise ValueError(f"at most 1ms (a wake-up costs tens of microseconds: polling longer "
                         f"only burns CPU), got {given}")
    return seconds


class Performance(Frozen):
    """Trades of CPU for latency (README, "Busy polling")."""

    # After a read, while at most one request is in flight, keep polling the sockets this long
    # instead of letting the CPU sleep (HAProxy's busy-polling, bounded and adaptive). 0: off;
    # auto: 50us where it pays and costs nobody's CPU (dataplane/cpuidle.py), else off.
    busy_poll: Annotated[float | Literal["auto"], PlainValidator(_busy_poll)] = "auto"


class Health(Frozen):
    """Passive health checking (outlier detection), as Envoy's: eject failing endpoints."""

    consecutive_failures: Positive = 5
    base_ejection: Timeout = 10.0  # doubled on each repeat ejection ...
    max_ejection: Timeout = 300.0  # ... up to this
    min_healthy: Annotated[int, Strict(), Field(ge=0)] = 1  # never eject below this many


class State(Frozen):
    """Where rollout state (phase, step, abort) survives restarts: a file beside the config,
    or Redis, shared by every replica."""

    backend: Backend = Backend.FILE
    path: str | None = None  # file: default <config name>.state.json beside the config
    url: str = "redis://127.0.0.1:6379/0"  # redis
    key_prefix: str = "splitproxy:"  # redis: every key starts with it
    lease: Timeout = 5.0  # redis: how long the replica running step timers holds the lease


class Config(Frozen):
    listen: Listeners = (Listener(address=HostPort("127.0.0.1:8080")),)
    admin: AdminConfig = AdminConfig()
    logging: Logging = Logging()
    routes: tuple[Route, ...] = Field(min_length=1)
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    performance: Performance = Performance()
    health: Health = Health()
    state: State = State()

    @field_validator("routes")
    @classmethod
    def _unique_route_names(cls, routes: tuple[Route, ...]) -> tuple[Route, ...]:
        if problems := route_name_problems([route.name for route in routes]):
            raise Located(problems)
        return routes

    @model_validator(mode="after")
    def _distinct_ports(self) -> Config:
        problems = [p for lst in self.listen for p in address_problems(lst.address,
                                                                       self.admin.listen)]
        problems += [(("listen",), message) for message in listener_problems(self.listen)]
        if problems:
            raise Located(problems)
        return self


def _recheck(data: Mapping[object, object]) -> list[Problem]:
    return recheck(data, Config.model_fields["listen"].default[0].address,
                   AdminConfig.model_fields["listen"].default)


def load(path: str | Path) -> Config:
    """Read, parse and validate one config file; every problem is one `file:line: ...` line,
    all of them in one go (`crossfield.recheck`)."""
    return load_model(path, Config, _recheck)


class _AdminOnly(Frozen):
    """A config file read for its `admin` section alone."""

    model_config = {"extra": "ignore"}  # merged with Frozen's
    admin: AdminConfig = AdminConfig()


def admin_listen(path: str | Path) -> tuple[HostPort, list[str]]:
    """`admin.listen` of a config file, and the file's problems (none when it loads). A file
    that fails validation elsewhere still names its admin address, so `splitproxy status`
    works when it is needed most; raises ConfigError when even that cannot be read."""
    try:
        return load(path).admin.listen, []
    except ConfigError as exc:
        problems = exc.errors
    return load_model(path, _AdminOnly).admin.listen, problems


def _percent(weight: float, total: float) -> str:
    share = 100 * weight / total
    return "<0.1%" if 0 < share < 0.05 else f"{share:.1f}%"


def describe(config: Config) -> str:
    """Human summary of what the proxy would do, for `splitproxy check`."""
    lines = [f"listen {listeners_text(config.listen)}, admin {config.admin.listen}"]
    for route in config.routes:
        host = route.match.host or "any host"
        lines.append(f"route {route.name}: {host}, path prefix {route.match.path_prefix}")
        weights = route.configured_weights
        total = sum(weights.values())
        shares = {v: f"{v} {w} ({_percent(w, total)})" for v, w in weights.items()}
        width = max(map(len, shares.values()))
        for version, cfg in route.versions.items():
            lines.append(f"  {shares[version]:<{width}}  {', '.join(cfg.endpoints)}")
        sticky = route.sticky
        lines.append(
            f"  sticky: pin header {sticky.pin_header or '-'}, hash header "
            f"{sticky.hash_header or '-'}, cookie {sticky.cookie or '-'}"
        )
    return "\n".join(lines)
