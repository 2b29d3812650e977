"""The guard's settings (`analysis:`): what a route's canary is judged on, and how strictly.
The tests themselves are in `rollout.guard`."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import PurePath
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, Strict, model_validator

from splitproxy.config.crossfield import analysis_problems
from splitproxy.config.metrics import CustomMetric
from splitproxy.config.units import Frozen, HttpUrl, Millis, Name, Timeout, Token
from splitproxy.config.yamlload import Located, Problem

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


class CompareToBaseline(Frozen):
    """A two-sample test over the same time: the canary's rate of errors (and of requests over
    each latency limit) is at most (1 + margin) times the baseline's."""

    margin: Annotated[float, Field(ge=0, le=100)] = 0.5
    error_rate_margin: Annotated[None, _gone(_REMOVED_COMPARE["error_rate_margin"])] = _GONE
    latency_factor: Annotated[None, _gone(_REMOVED_COMPARE["latency_factor"])] = _GONE


# Prometheus label names (its data model); `__`-names are Prometheus' own.
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Labels of splitproxy's own series, which the source reads or sets itself.
_OWN_LABELS = ("route", "version", "code", "over")


def _label_matchers(labels: dict[str, str]) -> dict[str, str]:
    problems: list[Problem] = []
    for name in labels:
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            problems.append(((name,), "not a Prometheus label name (letters, digits and '_', "
                             "not starting with a digit or '__')"))
        elif name in _OWN_LABELS:
            problems.append(((name,), f"{name!r} is a label of splitproxy's own series, "
                             "which the query reads itself: match on the labels Prometheus "
                             "adds (job, namespace, instance, ...)"))
    if problems:
        raise Located(problems)
    return labels


def _absolute(value: str) -> str:
    if not PurePath(value).is_absolute():
        raise ValueError(f"must be an absolute path (a mounted secret's), got {value!r}")
    return value


SecretFile = Annotated[str, AfterValidator(_absolute)]


class BasicAuth(Frozen):
    # RFC 7617: the user-id cannot contain a colon (it ends the user-id).
    username: Annotated[str, Field(min_length=1, pattern=r"^[^:\x00-\x1f\x7f]+$")]
    password_file: SecretFile  # read at every query: a rotated secret applies at once


class PrometheusQuery(Frozen):
    """Where `source: prometheus` reads, and which of the series it reads: `labels` are
    added to every query as exact matchers, so two fleets (jobs, namespaces) that serve a
    route of the same name are never summed together."""

    url: HttpUrl = "http://127.0.0.1:9090"
    labels: Annotated[dict[str, str], AfterValidator(_label_matchers)] = Field(
        default_factory=dict)
    bearer_token_file: SecretFile | None = None  # read at every query, as password_file
    basic_auth: BasicAuth | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> PrometheusQuery:
        if self.bearer_token_file is not None and self.basic_auth is not None:
            raise Located([(("basic_auth",), "set bearer_token_file or basic_auth, not both")])
        return self


class Advance(StrEnum):
    """When a timed pause of a guarded rollout ends."""

    ON_PASS = "on-pass"  # its time is up *and* the guard passes at that check
    ON_TIMER = "on-timer"  # its time is up (blind; the guard can still abort)


class Source(StrEnum):
    """Where the guard's counts come from (`analysis.source`)."""

    LOCAL = "local"  # this process's counters (with the Redis store: every replica's)
    PROMETHEUS = "prometheus"  # Prometheus' raw counters of every replica


# `max_pNN_ms: T` means "at most (1 - NN%) of requests slower than T": the threshold of a
# rate test on the count of requests over T.
LATENCY_LIMITS = (("p50", "max_p50_ms", 0.5), ("p90", "max_p90_ms", 0.1),
                  ("p99", "max_p99_ms", 0.01))


class Analysis(Frozen):
    """The guard: anytime-valid sequential tests on exact counts (see `rollout.guard`), judged
    every `interval`; a healthy canary is aborted with probability at most `alpha` over its
    whole rollout."""

    baseline: Name | None = None  # default: the first version listed
    interval: Timeout = 1.0  # looking is free for anytime-valid tests
    alpha: Annotated[float, Field(gt=0, le=0.5)] = 0.01  # false aborts, whole rollout
    beta: Annotated[float, Field(gt=0, le=0.5)] = 0.05  # a bad canary passing a step
    advance: Advance = Advance.ON_PASS
    max_error_rate: Annotated[float | None, AfterValidator(_limit_rate)] = 0.01
    max_p50_ms: Millis | None = None
    max_p90_ms: Millis | None = None
    max_p99_ms: Millis | None = None
    compare_to_baseline: CompareToBaseline | None = None
    # Where the numbers come from: this process's own counters (with the Redis store: every
    # replica's, shared through Redis), or Prometheus' raw counters of every replica.
    source: Source = Source.LOCAL
    prometheus: PrometheusQuery = PrometheusQuery()
    prometheus_url: HttpUrl | None = None  # the older spelling of prometheus.url
    synthetic_header: Token = "X-Splitproxy-Synthetic"  # marks synthetic load
    include_synthetic: bool = False  # judge synthetic requests too
    history: Annotated[int, Strict(), Field(ge=1, le=1000)] = 20  # checks kept for /status
    # Custom metrics from Prometheus (`prometheus`: url, labels, auth), judged beside the
    # built-in checks.
    metrics: tuple[CustomMetric, ...] = ()
    min_requests: Annotated[None, _gone(_REMOVED_ANALYSIS["min_requests"])] = _GONE
    window: Annotated[None, _gone(_REMOVED_ANALYSIS["window"])] = _GONE
    failure_limit: Annotated[None, _gone(_REMOVED_ANALYSIS["failure_limit"])] = _GONE
    inconclusive_limit: Annotated[None, _gone(_REMOVED_ANALYSIS["inconclusive_limit"])] = _GONE

    @model_validator(mode="after")
    def _judges_something(self) -> Analysis:
        if problems := analysis_problems(self.max_error_rate is not None,
                                         self.compare_to_baseline is not None,
                                         bool(self.latency_limits()), bool(self.metrics)):
            raise Located(problems)
        names = [m.name for m in self.metrics]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"analysis.metrics: the name {twice[0]!r} is used twice")
        if self.prometheus_url is not None and "url" in self.prometheus.model_fields_set:
            raise Located([(("prometheus_url",), "set prometheus.url or prometheus_url, not "
                            "both (prometheus_url is the older spelling of prometheus.url)")])
        return self

    @property
    def prometheus_query(self) -> PrometheusQuery:
        """`prometheus`, with `prometheus_url` as its url where that is set."""
        if self.prometheus_url is None:
            return self.prometheus
        return self.prometheus.model_copy(update={"url": self.prometheus_url})

    def latency_limits(self) -> tuple[tuple[str, float, float], ...]:
        """(name, limit in seconds, threshold) per configured limit, slowest limit last."""
        out = [(name, ms / 1000.0, threshold) for name, attr, threshold in LATENCY_LIMITS
               if (ms := getattr(self, attr)) is not None]
        return tuple(sorted(out, key=lambda limit: limit[1]))

