"""Typed configuration: the models of the one YAML file, and `load(path)`.

`load(path)` returns a frozen `Config` or raises `ConfigError` whose message names the file, the
line and the field path (``config.yaml:12: routes[0].weights.canary: must be >= 0``); the YAML
and error-location work is in `yamlconfig`. No code below `load()` sees a raw dict.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from fractions import Fraction
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from splitproxy.config.paths import normalise_prefix
from splitproxy.config.yamlload import ConfigError as ConfigError
from splitproxy.config.yamlload import Located, Problem, load_model

_NUMBER = r"(-?(?:\d+(?:\.\d*)?|\.\d+))"
_DURATION = re.compile(_NUMBER + r"\s*(ms|s|m|h)?", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(_NUMBER + r"\s*([a-z]*)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1}
for _exp, _p in enumerate("kmgt", start=1):
    _SIZE_UNITS.update({_p: 1000**_exp, _p + "b": 1000**_exp})  # SI, as disks and `10k`
    _SIZE_UNITS.update({_p + "i": 1024**_exp, _p + "ib": 1024**_exp})  # IEC


def _number(value: object) -> float | None:
    # bool is an int subclass; `true` as a duration is a typo, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def parse_duration(value: object) -> float:
    """`500ms`, `2s`, `1m`, `1h` or a bare number of seconds -> seconds as a float."""
    seconds = _number(value)
    if seconds is None and isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        seconds = float(m[1]) * _DURATION_UNITS[(m[2] or "s").lower()]
    if seconds is None:
        raise ValueError(f"expected a duration like 500ms, 2s or 1m, got {value!r}")
    if seconds < 0:
        raise ValueError(f"duration must be >= 0, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """`512`, `64KiB`, `10MB`, `1GiB` -> bytes."""
    size: Fraction | None = None
    if (number := _number(value)) is not None:
        size = Fraction(number)
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        if (unit := _SIZE_UNITS.get(m[2].lower())) is not None:
            size = Fraction(m[1]) * unit
    if size is None:
        raise ValueError(f"expected a size like 512, 64KiB or 10MB, got {value!r}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {value!r}")
    if size.denominator != 1:
        raise ValueError(f"size must be a whole number of bytes, got {value!r}")
    return int(size)


_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token; cookie names too


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"invalid name {value!r}: use only letters, digits, '_', '.' and '-'")
    return value


def _token(value: str | None) -> str | None:
    if value is not None and not _TOKEN.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid HTTP header or cookie name")
    return value


def _listen(value: object) -> str:
    text = value if isinstance(value, str) else ""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        bare = host[1:-1]
    else:
        bare = "" if ":" in host else host  # unbracketed IPv6 is ambiguous with the port
    if not (sep and bare and port.isdigit() and int(port) <= 65535):
        raise ValueError(f"expected host:port such as 127.0.0.1:8080 or [::1]:8080, got {value!r}")
    return text


def _endpoint(value: str) -> str:
    try:
        parts = urlsplit(value)
        # .port raises for a port that is not a number in 0..65535; none at all means 80.
        ok = parts.scheme == "http" and bool(parts.hostname) and parts.port != 0
    except ValueError:
        ok = False
    if not ok or parts.username:
        raise ValueError(f"expected an endpoint like http://127.0.0.1:9001, got {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"endpoint {value!r} must not have a path or query")
    return value


def _host(value: str | None) -> str | None:
    if value is not None and not _NAME.fullmatch(value):
        raise ValueError(f"expected a host name without scheme, port or path, got {value!r}")
    return value


def _webhook_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    return value


def _path_prefix(value: str) -> str:
    # Requests are matched on their normalised path (see `urlpath`); the prefix is normalised
    # the same way once, here, so `/api/./v1` and `/api//v1` mean what they say.
    if not value.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    try:
        return normalise_prefix(value)
    except ValueError as exc:
        raise ValueError(f"{exc}: {value!r}") from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
_Timeout = Annotated[Duration, Field(gt=0)]
_Name = Annotated[str, AfterValidator(_name)]
_Token = Annotated[str | None, AfterValidator(_token)]
_Listen = Annotated[str, BeforeValidator(_listen)]
_Weight = Annotated[int, Strict(), Field(ge=0)]  # `true` is not a weight


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AdminConfig(_Frozen):
    listen: _Listen = "127.0.0.1:9901"
    # A file holding the bearer token; required when `listen` is not a loopback address
    # (SPLITPROXY_ADMIN_TOKEN in the environment does as well).
    token_file: str | None = None


class Match(_Frozen):
    host: Annotated[str | None, AfterValidator(_host)] = None  # exact, case-insensitive
    path_prefix: Annotated[str, AfterValidator(_path_prefix)] = "/"


def _pin_token(value: str | None) -> str | None:
    if value is not None and not _TOKEN.fullmatch(value):
        raise ValueError("use only letters, digits and !#$%&'*+.^_`|~- (no spaces or ':')")
    if value is not None and len(value) < 16:
        raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 16`)")
    return value


class Sticky(_Frozen):
    """How a request may choose or keep its version (the order is in `routing`)."""

    # Off unless set: at the edge anyone can send a header.
    pin_header: _Token = None
    # When set, a pin (and blue-green's preview header) is honoured only with this secret:
    # `<pin_header>: <version>:<pin_token>`, `<preview_header>: <pin_token>`.
    pin_token: Annotated[str | None, AfterValidator(_pin_token)] = None
    hash_header: _Token = None
    cookie: _Token = None
    # The cookie names the version and the rollout run; it also expires after this long.
    cookie_max_age: Annotated[Duration, Field(gt=0)] = 86400.0


class VersionConfig(_Frozen):
    endpoints: tuple[Annotated[str, AfterValidator(_endpoint)], ...] = Field(min_length=1)


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
_Millis = Annotated[float, Field(gt=0)]


def _pause(value: object) -> object:
    # `pause: 30s` is shorthand for `pause: {duration: 30s}`; `pause: {}` waits for a promote.
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return {"duration": value}
    return value


def _time_zone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


def _hhmm(value: str) -> str:
    if not _HHMM.fullmatch(value):
        raise ValueError(f"expected a time like 09:30, got {value!r}")
    return value


def _day(value: str) -> str:
    if value.lower() not in _DAYS:
        raise ValueError(f"expected one of {', '.join(_DAYS)}, got {value!r}")
    return value.lower()


# Settings of the window-based guard (splitproxy 0.1) that no longer exist: each is refused at
# load, at its line, with what to write instead (never silently ignored).
_REMOVED_ANALYSIS = {
    "min_requests": "analysis.min_requests was removed: verdicts need no minimum, low traffic "
    "stays inconclusive until the evidence suffices (README: how long a verdict takes); "
    "delete the line",
    "window": "analysis.window was removed: each step is judged on all its traffic since the "
    "step began; delete the line",
    "failure_limit": "analysis.failure_limit was removed: one failing verdict aborts, because "
    "the verdict already carries its error rate; to make aborts rarer, lower analysis.alpha "
    "(default 0.01)",
    "inconclusive_limit": "analysis.inconclusive_limit was removed: a step now waits while the "
    "guard is inconclusive (advance: on-pass, the default); to advance on time regardless, "
    "write advance: on-timer",
}
_REMOVED_COMPARE = {
    "error_rate_margin": "compare_to_baseline.error_rate_margin was absolute; write "
    "compare_to_baseline.margin: 0.5 (relative: the canary may have up to 1.5x the baseline's "
    "rate)",
    "latency_factor": "compare_to_baseline.latency_factor compared interpolated quantiles; "
    "latency is now compared as the share of requests over each max_pNN_ms limit, with the "
    "same margin: write compare_to_baseline.margin",
}


def _gone(message: str) -> BeforeValidator:
    """A removed setting: present, it is an error that says what to write instead."""

    def refuse(value: object) -> object:
        raise ValueError(message)

    return BeforeValidator(refuse)


# A removed key, never set by anyone: excluded from dumps (and so from any identity).
_GONE = Field(default=None, exclude=True)


def _limit_rate(value: float | None) -> float | None:
    if value is not None and not 0.0 < value < 1.0:
        raise ValueError("a limit of 0 can never pass (no count proves a rate below 0); write a "
                         "small rate such as 0.001" if value <= 0.0 else
                         "a limit of 1 can never fail; to judge nothing, remove the limit")
    return value


class CompareToBaseline(_Frozen):
    """A two-sample test over the same time: the canary's rate of errors (and of requests over
    each latency limit) is at most (1 + margin) times the baseline's."""

    margin: Annotated[float, Field(ge=0, le=100)] = 0.5
    error_rate_margin: Annotated[None, _gone(_REMOVED_COMPARE["error_rate_margin"])] = _GONE
    latency_factor: Annotated[None, _gone(_REMOVED_COMPARE["latency_factor"])] = _GONE


class Advance(StrEnum):
    """When a timed pause of a guarded rollout ends."""

    ON_PASS = "on-pass"  # its time is up *and* the guard passes at that check
    ON_TIMER = "on-timer"  # its time is up (blind; the guard can still abort)


# `max_pNN_ms: T` means "at most (1 - NN%) of requests slower than T": the threshold of a
# rate test on the count of requests over T.
LATENCY_LIMITS = (("p50", "max_p50_ms", 0.5), ("p90", "max_p90_ms", 0.1),
                  ("p99", "max_p99_ms", 0.01))


class Analysis(_Frozen):
    """The guard: anytime-valid sequential tests on exact counts (see `rollout.guard`), judged
    every `interval`; a healthy canary is aborted with probability at most `alpha` over its
    whole rollout."""

    baseline: _Name | None = None  # default: the first version listed
    interval: _Timeout = 1.0  # looking is free for anytime-valid tests
    alpha: Annotated[float, Field(gt=0, le=0.5)] = 0.01  # false aborts, whole rollout
    beta: Annotated[float, Field(gt=0, le=0.5)] = 0.05  # a bad canary passing a step
    advance: Advance = Advance.ON_PASS
    max_error_rate: Annotated[float | None, AfterValidator(_limit_rate)] = 0.01
    max_p50_ms: _Millis | None = None
    max_p90_ms: _Millis | None = None
    max_p99_ms: _Millis | None = None
    compare_to_baseline: CompareToBaseline | None = None
    # Where the numbers come from: this process's own counters (with the Redis store: every
    # replica's, shared through Redis), or Prometheus' raw counters of every replica.
    source: Annotated[str, Field(pattern=r"^(local|prometheus)$")] = "local"
    prometheus_url: str = "http://127.0.0.1:9090"
    synthetic_header: _Token = "X-Splitproxy-Synthetic"  # marks synthetic load
    include_synthetic: bool = False  # judge synthetic requests too
    history: Annotated[int, Strict(), Field(ge=1, le=1000)] = 20  # checks kept for /status
    min_requests: Annotated[None, _gone(_REMOVED_ANALYSIS["min_requests"])] = _GONE
    window: Annotated[None, _gone(_REMOVED_ANALYSIS["window"])] = _GONE
    failure_limit: Annotated[None, _gone(_REMOVED_ANALYSIS["failure_limit"])] = _GONE
    inconclusive_limit: Annotated[None, _gone(_REMOVED_ANALYSIS["inconclusive_limit"])] = _GONE

    @model_validator(mode="after")
    def _judges_something(self) -> Analysis:
        if self.max_error_rate is None and self.compare_to_baseline is None \
                and not self.latency_limits():
            raise ValueError("analysis judges nothing: set max_error_rate, a max_pNN_ms or "
                             "compare_to_baseline, or remove analysis")
        return self

    def latency_limits(self) -> tuple[tuple[str, float, float], ...]:
        """(name, limit in seconds, threshold) per configured limit, slowest limit last."""
        out = [(name, ms / 1000.0, threshold) for name, attr, threshold in LATENCY_LIMITS
               if (ms := getattr(self, attr)) is not None]
        return tuple(sorted(out, key=lambda limit: limit[1]))


class Pause(_Frozen):
    duration: _Timeout | None = None  # None: until `splitproxy promote`


class Step(_Frozen):
    set_weight: Annotated[int, Strict(), Field(ge=0, le=100)] | None = None
    pause: Annotated[Pause, BeforeValidator(_pause)] | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        if (self.set_weight is None) == (self.pause is None):
            raise ValueError("a step is either `set_weight: N` or `pause: ...`")
        return self


class DeployWindow(_Frozen):
    """When steps may advance (Spinnaker's restricted execution windows); abort is always
    allowed. Both ends are inclusive to the minute (`end: 23:59` includes 23:59); an `end`
    before `start` runs across midnight, belonging to the day it starts on."""

    days: tuple[Annotated[str, AfterValidator(_day)], ...] = _DAYS
    start: Annotated[str, AfterValidator(_hhmm)] = "00:00"
    end: Annotated[str, AfterValidator(_hhmm)] = "23:59"
    tz: Annotated[str, AfterValidator(_time_zone)] = "UTC"


class WebhookEvent(StrEnum):
    """What a rollout tells the outside world: the one list of event names, for webhooks now
    and for notifications later."""

    PRE_STEP = "pre-step"  # before a step that changes weights; non-2xx holds it
    POST_STEP = "post-step"  # after every step the rollout passed
    ABORT = "abort"
    PROMOTED = "promoted"


class Webhook(_Frozen):
    on: WebhookEvent
    url: Annotated[str, AfterValidator(_webhook_url)]
    timeout: _Timeout = 5.0


class Rollout(_Frozen):
    # Changing it starts a new rollout: a new build behind the same endpoints is announced
    # here (CI sets it to the image tag). Endpoints and thresholds are not part of a rollout.
    revision: str | None = None
    canary: _Name | None = None  # the version the steps weigh; default: first non-baseline
    # None: the config's weights serve, and `revision` alone names the rollout.
    steps: tuple[Step, ...] = ()
    window: DeployWindow | None = None
    webhooks: tuple[Webhook, ...] = ()


class Route(_Frozen):
    name: _Name
    match: Match = Match()
    versions: dict[_Name, VersionConfig] = Field(min_length=1)
    # Declared before `weights`: its validator needs to know the strategy.
    strategy: Annotated[str, Field(pattern=r"^(canary|blue-green)$")] = "canary"
    # Every key a version; each >= 0; total > 0. Required for canary, unused by blue-green.
    weights: dict[str, _Weight] | None = Field(default=None, validate_default=True)
    sticky: Sticky = Sticky()
    active: _Name | None = None  # blue-green: the color that takes traffic
    # Blue-green: a request carrying it reaches the other color. Off unless set, as the pin.
    preview_header: _Token = None
    analysis: Analysis | None = None
    rollout: Rollout | None = None

    @field_validator("weights")
    @classmethod
    def _known_versions(
        cls, weights: dict[str, int] | None, info: ValidationInfo
    ) -> dict[str, int] | None:
        if weights is None:
            if info.data.get("strategy", "canary") == "canary":
                raise ValueError("required")
            return weights
        versions = info.data.get("versions")
        if versions is None:  # already reported as its own error
            return weights
        known = ", ".join(versions)
        problems: list[Problem] = [
            ((key,), f"unknown version {key!r} (versions: {known})")
            for key in weights
            if key not in versions
        ]
        if not problems and sum(weights.values()) <= 0:
            problems.append(((), "total weight must be > 0"))
        if problems:
            raise Located(problems)
        return weights

    @model_validator(mode="after")
    def _strategy_fields(self) -> Route:
        problems: list[Problem] = []
        names = ", ".join(self.versions)
        if self.strategy == "blue-green":
            if self.active is None:
                problems.append((("active",), "required for strategy blue-green"))
            elif self.active not in self.versions:
                problems.append((("active",), f"unknown version {self.active!r} ({names})"))
            if self.rollout is not None and (self.rollout.steps or self.rollout.window
                                             or self.rollout.canary):
                problems.append((("rollout",), "blue-green switches by `active`, not steps "
                                 "(only `revision` and `webhooks` apply)"))
        elif self.active is not None:
            problems.append((("active",), "only for strategy blue-green"))
        if self.analysis is not None and self.analysis.baseline is not None \
                and self.analysis.baseline not in self.versions:
            problems.append((("analysis", "baseline"),
                             f"unknown version {self.analysis.baseline!r} ({names})"))
        if self.rollout is not None and self.rollout.canary is not None:
            if self.rollout.canary not in self.versions:
                problems.append((("rollout", "canary"),
                                 f"unknown version {self.rollout.canary!r} ({names})"))
            elif self.rollout.canary == self.baseline:
                problems.append((("rollout", "canary"), "must not be the baseline version"))
        if self.rollout is not None and len(self.versions) < 2:
            problems.append((("rollout",), "needs at least two versions"))
        if problems:
            raise Located(problems)
        return self

    @property
    def configured_weights(self) -> dict[str, int]:
        """Weights as configured: blue-green gives the active color everything."""
        if self.weights is not None:
            return {v: self.weights.get(v, 0) for v in self.versions}
        return {v: 100 if v == self.active else 0 for v in self.versions}

    @property
    def baseline(self) -> str:
        """Takes all traffic on abort: analysis.baseline, else the first version listed."""
        if self.analysis is not None and self.analysis.baseline is not None:
            return self.analysis.baseline
        if self.strategy == "blue-green" and self.active is not None:
            return self.active
        return next(iter(self.versions))

    @property
    def canary(self) -> str | None:
        """The version a rollout's steps weigh."""
        if self.rollout is not None and self.rollout.canary is not None:
            return self.rollout.canary
        return next((v for v in self.versions if v != self.baseline), None)


class Timeouts(_Frozen):
    connect: _Timeout = 2.0
    response_header: _Timeout = 30.0
    client_header: _Timeout = 10.0
    # Between two reads of a request body (nginx client_body_timeout, 60 s): 408.
    client_body: _Timeout = 60.0
    # Between two reads of a response after its head (nginx proxy_read_timeout, 60 s): 504,
    # or a cut answer once it began; a timeout of the version.
    upstream_read: _Timeout = 60.0
    # Between two writes the client accepts while output waits for it (nginx send_timeout,
    # 60 s): the client's connection is cut and the upstream one closed; a client abort.
    client_send: _Timeout = 60.0
    # How long a request may wait for an upstream connection when every connection attempt
    # slot is taken: 503 with Retry-After, the proxy's own.
    pool_wait: _Timeout = 5.0
    idle: _Timeout = 60.0
    drain: _Timeout = 30.0  # graceful shutdown: how long in-flight requests may finish


_Positive = Annotated[int, Strict(), Field(ge=1)]


class Limits(_Frozen):
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
    max_connections: _Positive = 10000
    max_pending: _Positive = 1024


class Health(_Frozen):
    """Passive health checking (outlier detection), as Envoy's: eject failing endpoints."""

    consecutive_failures: Annotated[int, Strict(), Field(ge=1)] = 5
    base_ejection: _Timeout = 10.0  # doubled on each repeat ejection ...
    max_ejection: _Timeout = 300.0  # ... up to this
    min_healthy: Annotated[int, Strict(), Field(ge=0)] = 1  # never eject below this many


class State(_Frozen):
    """Where rollout state (phase, step, abort) survives restarts: a file beside the config,
    or Redis, shared by every replica."""

    backend: Annotated[str, Field(pattern=r"^(file|redis)$")] = "file"
    path: str | None = None  # file: default <config name>.state.json beside the config
    url: str = "redis://127.0.0.1:6379/0"  # redis
    key_prefix: str = "splitproxy:"  # redis: every key starts with it
    lease: _Timeout = 5.0  # redis: how long the replica running step timers holds the lease


class Config(_Frozen):
    listen: _Listen = "127.0.0.1:8080"
    admin: AdminConfig = AdminConfig()
    routes: tuple[Route, ...] = Field(min_length=1)
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    health: Health = Health()
    state: State = State()

    @field_validator("routes")
    @classmethod
    def _unique_route_names(cls, routes: tuple[Route, ...]) -> tuple[Route, ...]:
        first: dict[str, int] = {}
        problems: list[Problem] = []
        for i, route in enumerate(routes):
            if (j := first.setdefault(route.name, i)) != i:
                problems.append(((i, "name"), f"duplicate route name (also routes[{j}])"))
        if problems:
            raise Located(problems)
        return routes

    @model_validator(mode="after")
    def _distinct_ports(self) -> Config:
        # Port 0 asks the OS for a free port, so the two can never collide.
        if self.admin.listen == self.listen and not self.listen.endswith(":0"):
            raise Located([(("admin", "listen"), f"same address as listen ({self.listen})")])
        return self


def load(path: str | Path) -> Config:
    """Read, parse and validate one config file; every problem is one `file:line: ...` line."""
    return load_model(path, Config)


def _percent(weight: int, total: int) -> str:
    share = 100 * weight / total
    return "<0.1%" if 0 < share < 0.05 else f"{share:.1f}%"


def describe(config: Config) -> str:
    """Human summary of what the proxy would do, for `splitproxy check`."""
    lines = [f"listen {config.listen}, admin {config.admin.listen}"]
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
