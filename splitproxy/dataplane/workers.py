"""`splitproxy run --workers N`: N data-plane processes on one port (SO_REUSEPORT) under one
control-plane process.

The control plane (reload, rollout engine, admin API, metrics) stays in the parent; it pushes
each new routing table (as config + generation + weights + runs) to every worker, and every worker
reports its counters back four times a second, so analysis and metrics see all traffic, not
one worker's share.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from splitproxy.config import logformat
from splitproxy.config.models import Config
from splitproxy.config.tls import listeners_text
from splitproxy.dataplane import cpuidle
from splitproxy.dataplane.messages import (
    FromWorker,
    Ready,
    Report,
    Stop,
    Stopped,
    Table,
    ToWorker,
)
from splitproxy.dataplane.plane import EndpointHealth
from splitproxy.dataplane.procstats import Usage
from splitproxy.dataplane.stats import Stats
from splitproxy.dataplane.worker import worker_main
from splitproxy.routing import table

log = logging.getLogger("splitproxy.dataplane.workers")

START_TIMEOUT = 30.0


class _Worker:
    def __init__(self, index: int, process: BaseProcess, conn: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.report = Report((), 0, {}, ())  # the last one it sent (its usage: None yet)
        self.ready = asyncio.get_running_loop().create_future()
        self.stopped = asyncio.get_running_loop().create_future()


class WorkerPool:
    """The data plane as N processes; a `plane.DataPlane` for the controller."""

    def __init__(self, config: Config, count: int) -> None:
        if any(lst.address.port == 0 for lst in config.listen):
            raise ValueError("--workers > 1 needs a fixed listen port, not port 0")
        self.config = config
        self.count = count
        self.listening = False
        self.draining = False
        self.port = config.listen[0].address.port
        self.ports = [lst.address.port for lst in config.listen]
        self._workers: dict[int, _Worker] = {}
        self._routing: table.RoutingTable = table.build(config)
        # Counters of workers that died, so totals never drop.
        self._retired: list[Report] = []
        self._ctx = multiprocessing.get_context("spawn")
        self._busy_poll = cpuidle.choose(config.performance.busy_poll).window

    # -- DataPlane --------------------------------------------------------------------------
    @property
    def stats(self) -> Stats:
        total = Stats()
        for report in (*self._retired, *(w.report for w in self._workers.values())):
            for kind, n in report.local.items():
                total.local[kind] = total.local.get(kind, 0) + n
            for result, n in report.tls_reloads.items():
                total.tls_reloads[result] = total.tls_reloads.get(result, 0) + n
            for key, n in report.shadow.items():
                total.shadow[key] = total.shadow.get(key, 0) + n
            total.bad_requests += report.bad_requests
            for c in report.counters:
                c.add_to(total.get(c.route, c.version, c.synthetic))
        # A refusal is a state of the files on disk: a live worker's report says it (each
        # worker checks the files itself), since the first one saw it.
        for report in (w.report for w in self._workers.values()):
            for listener, problem in report.tls_refused.items():
                seen = total.tls_refused.get(listener)
                if seen is None or problem.since < seen.since:
                    total.tls_refused[listener] = problem
        return total

    def reconfigure(self, config: Config, routing: table.RoutingTable) -> None:
        self.config = config
        self._busy_poll = cpuidle.choose(config.performance.busy_poll).window
        self.install(routing)

    def busy_poll_window(self) -> float:
        """What each worker chose: they run where this process runs, so see what it sees."""
        return self._busy_poll

    def install(self, routing: table.RoutingTable) -> None:
        self._routing = routing
        message = Table.of(self.config, routing)
        for worker in self._workers.values():
            self._send(worker, message)

    def endpoint_health(self) -> list[EndpointHealth]:
        """An endpoint is up while no worker has it out of rotation (`merge_health`)."""
        merged: dict[tuple[str, str, str], EndpointHealth] = {}
        for worker in self._workers.values():
            for h in worker.report.health:
                key = (h.route, h.version, h.endpoint)
                seen = merged.get(key)
                if seen is None:
                    merged[key] = h
                else:
                    merged[key] = merge_health(seen, h)
        return list(merged.values())

    def worker_usage(self) -> list[tuple[int, Usage]]:
        """(worker index, its resource use) of every live worker that has reported."""
        return [(w.index, w.report.usage) for w in self._workers.values()
                if w.report.usage is not None]

    # -- life cycle -------------------------------------------------------------------------
    async def start(self, routing: table.RoutingTable) -> None:
        self._routing = routing
        for index in range(self.count):
            self._spawn(index)
        await asyncio.wait_for(
            asyncio.gather(*(w.ready for w in self._workers.values())), START_TIMEOUT)
        self.listening = True
        log.info("%d workers listening on %s", self.count, listeners_text(self.config.listen))

    def _spawn(self, index: int) -> None:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(child, Table.of(self.config, self._routing), index,
                  logging.getLogger().level, logformat.active()),
            name=f"splitproxy-worker-{index}",
        )
        # SIGHUP is for the control plane (reload). Sent to the whole process group (`kill
        # -HUP -PGID`, some supervisors), it must not kill a worker before the worker could
        # ignore it: the child inherits the blocked mask across fork and exec, ignores SIGHUP
        # first thing, then unblocks (a pending ignored signal is dropped). The resource
        # tracker multiprocessing starts here keeps it blocked for good.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child.close()
        worker = _Worker(index, process, parent)
        self._workers[index] = worker
        asyncio.get_running_loop().add_reader(parent.fileno(), self._on_message, worker)

    def _on_message(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                message: FromWorker = worker.conn.recv()
                if isinstance(message, Report):
                    worker.report = message
                elif isinstance(message, Ready) and not worker.ready.done():
                    worker.ready.set_result(None)
                elif isinstance(message, Stopped) and not worker.stopped.done():
                    worker.stopped.set_result(None)
        except (EOFError, OSError):
            self._lost(worker)

    def _lost(self, worker: _Worker) -> None:
        asyncio.get_running_loop().remove_reader(worker.conn.fileno())
        worker.conn.close()
        self._workers.pop(worker.index, None)
        self._retired.append(worker.report)
        if not worker.stopped.done():
            worker.stopped.set_result(None)
        if not worker.ready.done():
            worker.ready.set_exception(RuntimeError(f"worker {worker.index} failed to start"))
        if not self.draining:
            log.error("worker %d (pid %s) died; starting a new one", worker.index,
                      worker.process.pid)
            worker.process.join(timeout=1)
            self._spawn(worker.index)

    def _send(self, worker: _Worker, message: ToWorker) -> None:
        try:
            worker.conn.send(message)
        except (OSError, ValueError):
            pass  # a dying worker; _lost() replaces it

    async def stop(self, drain: float | None = None) -> None:
        """Every worker stops accepting, drains for up to `drain` seconds, and exits."""
        if drain is None:
            drain = self.config.timeouts.drain
        self.draining = True
        self.listening = False
        workers = list(self._workers.values())
        for worker in workers:
            self._send(worker, Stop(drain))
        try:
            await asyncio.wait_for(
                asyncio.gather(*(w.stopped for w in workers)), drain + 5.0)
        except TimeoutError:
            log.warning("workers did not stop in time: killing them")
        for worker in workers:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()


def merge_health(a: EndpointHealth, b: EndpointHealth) -> EndpointHealth:
    """Two workers' views of one endpoint: out (ejected, or down on the active check) if out in
    either, as each worker probes and judges on its own; the failing side's last probe shown."""
    worse = b if (b.active == "down" or b.last_result == "failure") and a.active != "down" else a
    active = "down" if "down" in (a.active, b.active) else a.active if a.active != "off" \
        else b.active
    return EndpointHealth(
        a.route, a.version, a.endpoint, a.up and b.up, max(a.failures, b.failures),
        max(a.ejections, b.ejections), a.passive_up and b.passive_up, active,
        worse.last_result, worse.last_error)
