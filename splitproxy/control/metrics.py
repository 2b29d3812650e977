"""Every Prometheus metric splitproxy exports: names, labels and buckets live here only.

The data plane counts with plain integers (splitproxy.dataplane.stats); this collector turns those
counters into metric families when Prometheus scrapes, so counting costs nothing extra per
request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from splitproxy import __version__
from splitproxy.config.models import Route
from splitproxy.dataplane.procstats import Usage
from splitproxy.dataplane.stats import LATENCY_BUCKETS, VersionStats
from splitproxy.rollout import RouteState, guard
from splitproxy.rollout.verdicts import Outcome

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsSource(Protocol):
    """What the collector reads; the controller provides it."""

    def version_stats(self) -> Iterable[VersionStats]: ...
    def weights(self) -> Iterable[tuple[str, str, float]]: ...  # route, version, effective
    def endpoints(self) -> Iterable[tuple[str, str, str, bool]]: ...  # route, version, ep, up
    # route, version, endpoint, check ("active" only where a health_check applies), healthy
    def endpoint_checks(self) -> Iterable[tuple[str, str, str, str, bool]]: ...
    def reload_counts(self) -> dict[str, int]: ...
    def proxy_errors(self) -> dict[str, int]: ...  # the proxy's own 503s, by kind
    def tls_reloads(self) -> dict[str, int]: ...  # certificate reloads, by result
    def tls_refused(self) -> dict[str, bool]: ...  # TLS listener -> its files refused now
    def shadow_counts(self) -> dict[tuple[str, str, str], int]: ...  # route, to, result
    def generation(self) -> int: ...
    def rollout_metrics(self) -> Iterable[Metric]: ...
    def worker_usage(self) -> Iterable[tuple[int, Usage]]: ...  # worker index, its use
    def busy_poll_window(self) -> float: ...  # seconds; 0: off


class SplitproxyCollector(Collector):
    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        src = self.source
        stats = list(src.version_stats())
        requests = CounterMetricFamily(
            "splitproxy_requests", "Requests answered, by route, version and status code",
            labels=["route", "version", "code"],
        )
        errors = CounterMetricFamily(
            "splitproxy_upstream_errors", "Upstream failures by kind",
            labels=["route", "version", "kind"],
        )
        aborts = CounterMetricFamily(
            "splitproxy_client_aborts", "Clients that went away before their answer ended",
            labels=["route", "version"],
        )
        in_flight = GaugeMetricFamily(
            "splitproxy_requests_in_flight", "Requests being proxied now",
            labels=["route", "version"],
        )
        duration = HistogramMetricFamily(
            "splitproxy_request_duration_seconds",
            "From request head received to the answer's last byte handed to the client "
            "(a slow client included): for dashboards, the guard counts upstream time",
            labels=["route", "version"],
        )
        timed, slow = _upstream_families("splitproxy_upstream")
        for s in stats:
            labels = [s.route, s.version]
            for code, n in sorted(s.responses.items()):
                requests.add_metric([*labels, str(code)], n)
            for kind, n in s.errors.items():
                errors.add_metric([*labels, kind], n)
            aborts.add_metric(labels, s.client_aborts)
            in_flight.add_metric(labels, s.in_flight)
            buckets = []
            cumulative = 0
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), s.latency_counts, strict=True):
                cumulative += n
                buckets.append((_le(bound), cumulative))
            duration.add_metric(labels, buckets, s.latency_sum)
            _add_upstream(timed, slow, s)
        yield from (requests, errors, aborts, in_flight, duration, timed, slow)

        weight = GaugeMetricFamily(
            "splitproxy_route_weight", "Effective weight of each version",
            labels=["route", "version"],
        )
        for route, version, w in src.weights():
            weight.add_metric([route, version], w)
        yield weight
        up = GaugeMetricFamily(
            "splitproxy_endpoint_up", "1 while an endpoint takes traffic, 0 while ejected",
            labels=["route", "version", "endpoint"],
        )
        for route, version, endpoint, is_up in src.endpoints():
            up.add_metric([route, version, endpoint], 1 if is_up else 0)
        yield up
        healthy = GaugeMetricFamily(
            "splitproxy_endpoint_healthy",
            "1 while an endpoint passes a check: passive (not ejected) or active (its probe)",
            labels=["route", "version", "endpoint", "check"],
        )
        for route, version, endpoint, check, ok in src.endpoint_checks():
            healthy.add_metric([route, version, endpoint, check], 1 if ok else 0)
        yield healthy

        reloads = CounterMetricFamily(
            "splitproxy_config_reloads", "Config reloads by result", labels=["result"]
        )
        for result, n in src.reload_counts().items():
            reloads.add_metric([result], n)
        yield reloads
        own = CounterMetricFamily(
            "splitproxy_proxy_errors",
            "The proxy's own 503s (overload, local resource failure), never a version's",
            labels=["kind"],
        )
        for kind, n in src.proxy_errors().items():
            own.add_metric([kind], n)
        yield own
        certs = CounterMetricFamily(
            "splitproxy_tls_certificate_reloads",
            "TLS listeners' certificate sets reloaded after their files changed, by result "
            "(error: refused, the old ones serve on)", labels=["result"],
        )
        for result, n in src.tls_reloads().items():
            certs.add_metric([result], n)
        yield certs
        refused = GaugeMetricFamily(
            "splitproxy_tls_certificates_refused",
            "1 while a TLS listener's certificate files on disk do not load (its previous "
            "certificates serve on), 0 once they do", labels=["listener"],
        )
        for listener, now in src.tls_refused().items():
            refused.add_metric([listener], 1 if now else 0)
        yield refused
        shadow = CounterMetricFamily(
            "splitproxy_shadow_requests",
            "Shadow copies (a route's mirror) by the version copied to and the comparison's "
            "result: match, mismatch, dropped (slow shadow, bound reached), error",
            labels=["route", "to", "result"],
        )
        for (route, to, result), n in sorted(src.shadow_counts().items()):
            shadow.add_metric([route, to, result], n)
        yield shadow
        yield GaugeMetricFamily(
            "splitproxy_config_generation", "Generation of the config being served",
            value=src.generation(),
        )
        info = InfoMetricFamily("splitproxy_build", "splitproxy build information")
        info.add_metric([], {"version": __version__})
        yield info
        yield from src.rollout_metrics()
        yield from worker_families(src.worker_usage())
        yield GaugeMetricFamily(
            "splitproxy_busy_poll_window_seconds",
            "How long each worker keeps polling after a read instead of sleeping "
            "(performance.busy_poll, auto as chosen for this machine); 0: off",
            value=src.busy_poll_window(),
        )


def worker_families(usage: Iterable[tuple[int, Usage]]) -> list[Metric]:
    """`--workers N`: each worker process's own use, as it reported it with its counters
    (the control process's is `process_*`, from prometheus-client's ProcessCollector)."""
    labels = ["worker"]
    rss = GaugeMetricFamily("splitproxy_worker_resident_memory_bytes",
                            "Resident memory of each worker process", labels=labels)
    cpu = CounterMetricFamily("splitproxy_worker_cpu_seconds",
                              "User and system CPU time of each worker process", labels=labels)
    fds = GaugeMetricFamily("splitproxy_worker_open_fds",
                            "Open file descriptors of each worker process", labels=labels)
    max_fds = GaugeMetricFamily("splitproxy_worker_max_fds",
                                "Descriptor limit (soft RLIMIT_NOFILE) of each worker process",
                                labels=labels)
    started = GaugeMetricFamily("splitproxy_worker_start_time_seconds",
                                "Start time of each worker process (Unix time): a replaced "
                                "worker shows as a new value", labels=labels)
    for index, u in usage:
        worker = [str(index)]
        rss.add_metric(worker, u.resident_bytes)
        cpu.add_metric(worker, u.cpu_seconds)
        fds.add_metric(worker, u.open_fds)
        max_fds.add_metric(worker, u.max_fds)
        started.add_metric(worker, u.start_time)
    return [rss, cpu, fds, max_fds, started]


def _upstream_families(prefix: str) -> tuple[CounterMetricFamily, CounterMetricFamily]:
    """The guard's exact latency counts: what `source: prometheus` judges on."""
    timed = CounterMetricFamily(
        f"{prefix}_timed_requests",
        "Requests with an upstream time: from the request sent to the upstream to the "
        "response's last byte read from it, not counting time held for a slow client",
        labels=["route", "version"],
    )
    slow = CounterMetricFamily(
        f"{prefix}_slow_requests",
        "Timed requests whose upstream time exceeded `over` seconds, for each latency limit "
        "of the route's analysis (max_p50_ms, max_p90_ms, max_p99_ms)",
        labels=["route", "version", "over"],
    )
    return timed, slow


def _add_upstream(timed: CounterMetricFamily, slow: CounterMetricFamily,
                  s: VersionStats) -> None:
    timed.add_metric([s.route, s.version], s.timed)
    for limit, n in sorted(s.over.items()):
        slow.add_metric([s.route, s.version, over_label(limit)], n)


def over_label(limit: float) -> str:
    """The `over` label of a latency limit (seconds): `repr`, so it parses back exactly."""
    return repr(limit)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def make_registry(source: MetricsSource) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SplitproxyCollector(source))
    # process_*: this (the control) process's memory, CPU, descriptors and start time; with
    # one process it is also the data plane's. Nothing where /proc is missing.
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def rollout_families(
    phases: dict[str, str],
    steps: dict[str, int],
    aborts: dict[str, int],
    checks: dict[tuple[str, str], int],
    synthetic: Iterable[VersionStats],
    store_up: bool,
    last_abort: dict[str, float] | None = None,
) -> list[Metric]:
    """Rollout engine metrics: phase (one series per phase, 1 for the current one), step,
    aborts and the time of the last one, analysis checks by result, and synthetic requests
    (kept out of analysis)."""
    from splitproxy.rollout import PHASES

    phase = GaugeMetricFamily(
        "splitproxy_rollout_phase", "1 for the phase each route's rollout is in",
        labels=["route", "phase"],
    )
    step = GaugeMetricFamily("splitproxy_rollout_step", "Index of the current rollout step",
                             labels=["route"])
    aborted = CounterMetricFamily("splitproxy_rollout_aborts", "Rollouts aborted",
                                  labels=["route"])
    # One abort, one value: the abort's time is part of the shared state, the same on every
    # replica, kept after a retry, however often it is scraped. The dashboard's abort
    # annotation reads it as "series value as timestamp": one mark per abort, at its time.
    when = GaugeMetricFamily("splitproxy_rollout_last_abort_timestamp_seconds",
                             "When the route's last abort happened (Unix time), as this "
                             "process saw it; 0 if none since it started", labels=["route"])
    judged = CounterMetricFamily("splitproxy_analysis_checks", "Analysis checks by result",
                                 labels=["route", "result"])
    for route, current in phases.items():
        for name in PHASES:
            phase.add_metric([route, name], 1 if name == current else 0)
        step.add_metric([route], steps.get(route, 0))
        aborted.add_metric([route], aborts.get(route, 0))
        when.add_metric([route], (last_abort or {}).get(route, 0.0))
    for (route, result), n in sorted(checks.items()):
        judged.add_metric([route, result], n)
    synth = CounterMetricFamily(
        "splitproxy_synthetic_requests", "Requests marked as synthetic load",
        labels=["route", "version", "code"],
    )
    synth_timed, synth_slow = _upstream_families("splitproxy_synthetic_upstream")
    for s in synthetic:
        for code, n in sorted(s.responses.items()):
            synth.add_metric([s.route, s.version, str(code)], n)
        _add_upstream(synth_timed, synth_slow, s)
    up = GaugeMetricFamily("splitproxy_state_store_up",
                           "1 while the rollout state store (file or Redis) is reachable",
                           value=1 if store_up else 0)
    return [phase, step, aborted, when, judged, synth, synth_timed, synth_slow, up]


def notification_family(outcomes: Mapping[tuple[str, str], int]) -> Metric:
    """Notifications by event and result: delivered, failed (after its retries) or dropped
    (a receiver's queue was full)."""
    family = CounterMetricFamily("splitproxy_notifications", "Rollout notifications sent",
                                 labels=["event", "result"])
    for (event, result), n in sorted(outcomes.items()):
        family.add_metric([event, result], n)
    return family


def baseline_down_family(counts: dict[str, int]) -> CounterMetricFamily:
    """Aborts that shifted traffic onto a baseline with no healthy endpoint, per route."""
    family = CounterMetricFamily(
        "splitproxy_rollout_aborts_onto_unhealthy_baseline",
        "Aborts that sent traffic to a baseline with no healthy endpoint", labels=["route"])
    for route, n in counts.items():
        family.add_metric([route], n)
    return family


# A custom metric's verdict at the latest check (`analysis.metrics`), for the dashboard:
# (route, version, metric name, outcome, estimate or None, threshold or None).
MetricReading = tuple[str, str, str, str, float | None, float | None]


def metric_readings(routes: Mapping[str, Route], states: Mapping[str, RouteState]
                    ) -> list[MetricReading]:
    """Every custom metric's verdict, estimate and threshold in its route's latest guard
    report (/status has the whole report); no threshold for a comparison with the baseline."""
    out: list[MetricReading] = []
    for name, route in routes.items():
        if route.analysis is None or not route.analysis.metrics or name not in states:
            continue
        report = guard.report(states[name], route)
        for m in report["metrics"] if report is not None else ():
            limit = m.get("threshold") if m.get("against") is None else None
            out.append((name, m["version"], m["name"], m["outcome"], m.get("estimate"), limit))
    return out


def analysis_metric_families(readings: Iterable[MetricReading]) -> list[Metric]:
    """Custom metrics beside the built-in checks: each one's verdict (1 for the current
    outcome, as the rollout phase), its estimate and the threshold it is judged against (a
    comparison with the baseline has none)."""
    verdict = GaugeMetricFamily(
        "splitproxy_analysis_metric_verdict",
        "1 for the outcome of each custom metric (analysis.metrics) at the latest check",
        labels=["route", "version", "metric", "outcome"])
    estimate = GaugeMetricFamily(
        "splitproxy_analysis_metric_estimate",
        "Each custom metric's estimate at the latest check (a rate or the gauge's value)",
        labels=["route", "version", "metric"])
    threshold = GaugeMetricFamily(
        "splitproxy_analysis_metric_threshold",
        "The threshold each custom metric is judged against", labels=["route", "version",
                                                                      "metric"])
    for route, version, name, outcome, est, limit in readings:
        for each in Outcome:
            verdict.add_metric([route, version, name, each], 1 if each == outcome else 0)
        if est is not None:
            estimate.add_metric([route, version, name], est)
        if limit is not None:
            threshold.add_metric([route, version, name], limit)
    return [verdict, estimate, threshold]
