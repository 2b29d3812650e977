"""The control plane of one process: serves a config, reloads it, samples counters, reports.

It never touches proxied sockets: it hands routing tables to the data plane (`ProxyServer`)
and reads the data plane's counters.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from prometheus_client.core import Metric

from splitproxy.config import isolate
from splitproxy.config.isolate import load_in_child
from splitproxy.config.models import Config, ConfigError, load
from splitproxy.config.tls import listeners_text
from splitproxy.config.yamlload import MAX_CONFIG_BYTES
from splitproxy.control.adminguard import AdminGuard
from splitproxy.control.clock import SYSTEM, Clock
from splitproxy.control.engine import RolloutEngine
from splitproxy.control.metrics import (
    analysis_metric_families,
    baseline_down_family,
    metric_readings,
    notification_family,
    rollout_families,
)
from splitproxy.control.reload import ConfigWatcher
from splitproxy.control.status import (
    AdminStatus,
    CertificatesRefused,
    ConfigStatus,
    EndpointStatus,
    FileStoreStatus,
    LastReload,
    RedisStoreStatus,
    RestartNeeded,
    RouteStatus,
    Status,
    VersionStatus,
    store_status,
)
from splitproxy.control.stores.store import StateStore, make_store
from splitproxy.control.tasks import cancel_and_wait
from splitproxy.control.window import Sample, Window
from splitproxy.dataplane.plane import DataPlane
from splitproxy.dataplane.procstats import Usage
from splitproxy.dataplane.stats import VersionStats
from splitproxy.rollout import Phase, RouteState
from splitproxy.routing import table

log = logging.getLogger("splitproxy.control.controller")

SAMPLE_INTERVAL = 1.0
REALIZED_WINDOW = 60.0  # the realized split in /status covers this many seconds


class Controller:
    def __init__(
        self, path: Path, config: Config, server: DataPlane, store: StateStore | None = None,
        clock: Clock = SYSTEM, guard: AdminGuard | None = None,
    ) -> None:
        self.path = path
        self.clock = clock
        self.config = config
        self.started = config  # what the settings a reload cannot change were started with
        self.guard = guard  # the admin API's access rules: a reload replaces them
        self.server = server
        self.table = table.build(config)  # the last table handed to the data plane
        self._generation = 1
        self._digest = _digest(path)
        self.reloads = {"success": 0, "error": 0}
        self.last_reload_time: float | None = None  # wall clock
        self.last_result: Literal["success", "error"] | None = None
        self.last_error: str | None = None
        self.window = Window(horizon=REALIZED_WINDOW + 2 * SAMPLE_INTERVAL)
        self.watcher = ConfigWatcher(path, self._on_file_change)
        self.store = store if store is not None else make_store(config, path)
        self.engine = RolloutEngine(self.store, self._counters, self.rebuild, clock)
        self.engine.all_down = self._all_down
        self._sampler: asyncio.Task[None] | None = None
        self._reloading: asyncio.Task[None] | None = None
        self._again = False  # another reload was asked for while one ran
        self._again_forced = False

    # -- life cycle -------------------------------------------------------------------------
    async def prepare(self) -> table.RoutingTable:
        """Restore rollout state; the first routing table, before any client is accepted
        (a canary aborted before a restart must not see one request after it)."""
        await self.engine.start(self.config)
        return self._table()

    async def start(self, watch: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self._sampler = loop.create_task(self._sample_forever())
        if watch:
            self.watcher.start()
            # Reloads parse in a child of the fork server (config.isolate): start it in advance.
            loop.run_in_executor(None, isolate.warm)
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests) or no signals on this platform

    async def stop(self) -> None:
        await self.watcher.stop()
        if self._reloading is not None and not self._reloading.done():
            await cancel_and_wait([self._reloading])
        await self.engine.stop()
        if self._sampler is not None:
            self._sampler.cancel()
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            # Removing the handler restores the default action, which kills: a SIGHUP to the
            # process group while the proxy drains must not cut requests in flight.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        except (NotImplementedError, RuntimeError, ValueError):
            pass

    @property
    def ready(self) -> bool:
        return self.server.listening and not self.server.draining

    # -- reload -----------------------------------------------------------------------------
    def _on_file_change(self) -> None:
        self.reload_soon()

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.path)
        self.reload_soon(force=True)

    def reload_soon(self, force: bool = False) -> None:
        """A reload as the watcher and SIGHUP do it: parsed in a child process (`config.isolate`),
        so no file can stall the loop; one at a time, the last request winning."""
        if self._reloading is not None and not self._reloading.done():
            self._again = True  # the running reload may have read the file before this change
            self._again_forced = self._again_forced or force
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload_task(force))

    async def _reload_task(self, force: bool) -> None:
        while True:
            await self.reload_async(force)
            if not self._again:
                return
            force = self._again_forced
            self._again = self._again_forced = False

    async def reload_async(self, force: bool = False) -> bool:
        """`reload()` with the parse in a child process under a time limit."""
        digest = _digest(self.path)
        if digest == self._digest and not force:
            return self.last_result != "error"
        self._digest = digest
        try:
            new = await load_in_child(self.path)
        except ConfigError as exc:
            return self._rejected(exc)
        return self._loaded(new)

    def reload(self, force: bool = False) -> bool:
        """Load the file again; apply it whole, or keep serving the old config and say why.
        Parses in this process (bounded by yamlload's limits); the watcher and SIGHUP use
        `reload_soon`, which parses in a child process."""
        digest = _digest(self.path)
        if digest == self._digest and not force:
            # An event in the directory that did not change our file (or a bad file that was
            # already reported): nothing to do.
            return self.last_result != "error"
        self._digest = digest
        try:
            new = load(self.path)
        except ConfigError as exc:
            return self._rejected(exc)
        return self._loaded(new)

    def _rejected(self, exc: ConfigError) -> bool:
        self.reloads["error"] += 1
        self.last_reload_time = time.time()
        self.last_result = "error"
        self.last_error = str(exc)
        for line in exc.errors:
            log.error("config reload rejected, still serving generation %d: %s",
                      self._generation, line)
        return False

    def _loaded(self, new: Config) -> bool:
        # The token file is read before anything applies: a reload whose token cannot be
        # read (or that would leave a non-loopback admin API open) is refused whole.
        try:
            admin = self.guard.prepare(new.admin) if self.guard is not None else None
        except ConfigError as exc:
            return self._rejected(exc)
        if new == self.config:
            self.last_result = "success"
            self.last_error = None
        else:
            self.apply(new)
        if self.guard is not None and admin is not None:
            self.guard.install(admin)
        return True

    def apply(self, new: Config) -> None:
        old = self.config
        for field, was, now in _restart_only(old, new):
            if was != now:
                log.warning("%s changed from %s to %s: needs a restart, not applied",
                            field, was, now, extra={"field": field})
        self._generation += 1
        self.config = new
        self.engine.reconfigure(new)
        self.server.reconfigure(new, self._table())
        self.reloads["success"] += 1
        self.last_reload_time = time.time()
        self.last_result = "success"
        self.last_error = None
        log.info("config generation %d applied from %s", self._generation, self.path)

    def restart_needed(self) -> list[dict[str, str]]:
        """Settings the file changed since start-up that only a restart applies."""
        return [{"field": field, "running": running, "configured": configured}
                for field, running, configured in _restart_only(self.started, self.config)
                if running != configured]

    def _table(self) -> table.RoutingTable:
        self.table = table.build(self.config, self._generation, self.engine.weights(),
                                 self.engine.runs(), self.engine.header_routes(),
                                 self.engine.mirrors())
        return self.table

    def rebuild(self) -> None:
        """Swap in a table with the rollout engine's current weights."""
        self.server.install(self._table())

    # -- sampling ---------------------------------------------------------------------------
    async def _sample_forever(self) -> None:
        while True:
            self.sample(self.clock.monotonic())
            await self.clock.sleep(SAMPLE_INTERVAL)

    def sample(self, now: float) -> None:
        """For /status' realized split (the guard reads the counters themselves)."""
        self.window.record(
            now, {(s.route, s.version, s.synthetic): Sample.of(s) for s in self._counters()})

    def _counters(self) -> list[VersionStats]:
        stats = self.server.stats  # with workers: summed afresh at each access
        return [*stats.all(), *stats.synthetic()]

    # -- reporting (also the metrics source) ------------------------------------------------
    def store_status(self) -> FileStoreStatus | RedisStoreStatus:
        return store_status(self.store.describe(), self.engine.pending_writes())

    def generation(self) -> int:
        return self._generation

    def reload_counts(self) -> dict[str, int]:
        return dict(self.reloads)

    def proxy_errors(self) -> dict[str, int]:
        return dict(self.server.stats.local)

    def tls_reloads(self) -> dict[str, int]:
        return dict(self.server.stats.tls_reloads)

    def tls_refused(self) -> dict[str, bool]:
        """Every TLS listener: whether its certificate files on disk are refused now."""
        refused = self.server.stats.tls_refused
        return {lst.address: lst.address in refused
                for lst in self.config.listen if lst.tls is not None}

    def shadow_counts(self) -> dict[tuple[str, str, str], int]:
        return dict(self.server.stats.shadow)

    def version_stats(self) -> Iterable[VersionStats]:
        return self.server.stats.all()

    def weights(self) -> Iterable[tuple[str, str, float]]:
        for route in self.table.routes:
            for version, weight in zip(route.plan.versions, route.plan.weights, strict=True):
                yield route.name, version, weight

    def _all_down(self) -> frozenset[tuple[str, str]]:
        """The (route, version) pairs without a healthy endpoint: each one ejected, or failing
        as often as ejects (`min_healthy` keeps the last ones in rotation: they still fail)."""
        limit = self.config.health.consecutive_failures
        up: dict[tuple[str, str], bool] = {}
        for h in self.server.endpoint_health():
            key = (h.route, h.version)
            up[key] = up.get(key, False) or (h.up and h.failures < limit)
        return frozenset(k for k, healthy in up.items() if not healthy)

    def endpoints(self) -> Iterable[tuple[str, str, str, bool]]:
        for h in self.server.endpoint_health():
            yield h.route, h.version, h.endpoint, h.up

    def endpoint_checks(self) -> Iterable[tuple[str, str, str, str, bool]]:
        for h in self.server.endpoint_health():
            yield h.route, h.version, h.endpoint, "passive", h.passive_up
            if h.active != "off":
                yield h.route, h.version, h.endpoint, "active", h.active == "up"

    def worker_usage(self) -> list[tuple[int, Usage]]:
        return self.server.worker_usage()

    def busy_poll_window(self) -> float:
        return self.server.busy_poll_window()

    def rollout_metrics(self) -> Iterable[Metric]:
        engine = self.engine
        return [*rollout_families(
            {name: state.phase for name, state in engine.states.items()},
            {name: state.step for name, state in engine.states.items()},
            engine.aborts,
            engine.checks_total,
            self.server.stats.synthetic(),
            self.store_status().up,
            _last_aborts(engine.last_abort, engine.states),
        ), notification_family(engine.webhooks.notifier.outcomes),
            baseline_down_family(engine.aborts_onto_down),
            *analysis_metric_families(metric_readings(engine.routes, engine.states))]

    def status(self) -> Status:
        now = self.clock.monotonic()
        realized = self.window.delta(now, REALIZED_WINDOW)
        span = self.window.span(now, REALIZED_WINDOW)
        routes = []
        health: dict[tuple[str, str], list[EndpointStatus]] = {}
        for h in self.server.endpoint_health():
            health.setdefault((h.route, h.version), []).append(EndpointStatus(
                url=h.endpoint if "://" in h.endpoint else f"http://{h.endpoint}",
                up=h.up,
                consecutive_failures=h.failures,
                ejections=h.ejections,
                passive="up" if h.passive_up else "ejected",
                active=h.active,
                active_last_result=h.last_result,
                active_last_error=h.last_error,
            ))
        stats = self.server.stats
        for entry in self.table.routes:
            route_cfg = next(r for r in self.config.routes if r.name == entry.name)
            configured = route_cfg.configured_weights
            total_weight = sum(entry.plan.weights) or 1
            seen = {v: realized.get((entry.name, v, False), Sample())
                    for v in entry.plan.versions}
            total_seen = sum(s.requests for s in seen.values())
            versions = {}
            for name, weight in zip(entry.plan.versions, entry.plan.weights, strict=True):
                window = seen[name]
                versions[name] = VersionStatus(
                    configured_weight=configured.get(name, 0),
                    effective_weight=weight,
                    configured_share=round(weight / total_weight, 4),
                    realized_share=round(window.requests / total_seen, 4)
                    if total_seen else None,
                    requests_in_window=window.requests,
                    errors_in_window=window.errors,
                    error_rate_in_window=_round(window.error_rate),
                    p50_ms_in_window=_round(_ms(window.quantile(0.5))),
                    p99_ms_in_window=_round(_ms(window.quantile(0.99))),
                    in_flight=stats.get(entry.name, name).in_flight,
                    endpoints=health.get((entry.name, name), []),
                )
            routes.append(RouteStatus(name=entry.name, versions=versions,
                                      rollout=self.engine.describe(entry.name)))
        return Status(
            config=ConfigStatus(
                path=str(self.path),
                generation=self._generation,
                last_reload=LastReload(
                    time=self.last_reload_time,
                    result=self.last_result,
                    error=self.last_error,
                ),
                reloads=dict(self.reloads),
                restart_needed=[RestartNeeded.model_validate(r)
                                for r in self.restart_needed()],
                certificate_reloads=self.tls_reloads(),
                certificates_refused=[
                    CertificatesRefused(listener=p.listener, error=p.error, since=p.since)
                    for p in stats.tls_refused.values()],
            ),
            admin=AdminStatus.model_validate(self.guard.describe())
            if self.guard is not None else None,
            ready=self.ready,
            state_store=self.store_status(),
            realized_window_seconds=round(span, 1),
            routes=routes,
        )


def _restart_only(old: Config, new: Config) -> list[tuple[str, str, str]]:
    """(field, old value, new value) of the settings a reload does not apply."""
    # A listener's address and scheme; its certificates and TLS settings are reloaded.
    return [("listen", listeners_text(old.listen), listeners_text(new.listen)),
            ("admin.listen", old.admin.listen, new.admin.listen),
            ("logging.format", old.logging.format, new.logging.format)]


def _last_aborts(seen: dict[str, float], states: dict[str, RouteState]) -> dict[str, float]:
    """When each route last aborted: as the engine saw it happen, or, for an abort restored
    from the store (before a restart), its stored time."""
    last = dict(seen)
    for name, state in states.items():
        if state.phase == Phase.ABORTED and state.aborted_at is not None:
            last[name] = max(last.get(name, 0.0), state.aborted_at)
    return last


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _digest(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            # Never more than the loader would read: a huge file is refused, not hashed.
            return hashlib.sha256(f.read(MAX_CONFIG_BYTES + 1)).digest()
    except OSError:
        return None
