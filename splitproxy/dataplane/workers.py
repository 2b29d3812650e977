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
from dataclasses import astuple
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from splitproxy.config import logsafe
from splitproxy.config.models import Config
from splitproxy.dataplane.procstats import Sampler, Usage
from splitproxy.dataplane.server import EndpointHealth, ProxyServer
from splitproxy.dataplane.stats import Stats, VersionStats
from splitproxy.routing import table

log = logging.getLogger("splitproxy.dataplane.workers")

REPORT_INTERVAL = 0.25
START_TIMEOUT = 30.0

Weights = dict[str, dict[str, int]]
# One VersionStats as plain data: route, version, synthetic, responses, errors,
# client_aborts, in_flight, latency_counts, latency_sum, timed, over.
Row = tuple[str, str, bool, dict[int, int], dict[str, int], int, int, list[int], float, int,
            dict[float, int]]


def _weights_of(routing: table.RoutingTable) -> Weights:
    return {r.name: dict(zip(r.plan.versions, r.plan.weights, strict=True))
            for r in routing.routes}


def _runs_of(routing: table.RoutingTable) -> dict[str, str]:
    """Each route's rollout run: sticky cookies must name it in every worker."""
    return {r.name: r.run for r in routing.routes}


def _rows(stats: Stats) -> list[Row]:
    return [
        (s.route, s.version, s.synthetic, dict(s.responses), dict(s.errors), s.client_aborts,
         s.in_flight, list(s.latency_counts), s.latency_sum, s.timed, dict(s.over))
        for s in (*stats.all(), *stats.synthetic())
    ]


def _add(into: VersionStats, row: Row) -> None:
    _, _, _, responses, errors, aborts, in_flight, latency, latency_sum, timed, over = row
    for code, n in responses.items():
        into.responses[code] = into.responses.get(code, 0) + n
    for kind, n in errors.items():
        into.errors[kind] = into.errors.get(kind, 0) + n
    into.client_aborts += aborts
    into.in_flight += in_flight
    into.latency_counts = [a + b for a, b in zip(into.latency_counts, latency, strict=True)]
    into.latency_sum += latency_sum
    into.timed += timed
    for limit, n in over.items():
        into.over[limit] = into.over.get(limit, 0) + n


class _Worker:
    def __init__(self, index: int, process: BaseProcess, conn: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.rows: list[Row] = []
        self.bad_requests = 0
        self.local: dict[str, int] = {}
        self.health: list[EndpointHealth] = []
        self.usage: Usage | None = None  # its memory, CPU and descriptors, as it last said
        self.ready = asyncio.get_running_loop().create_future()
        self.stopped = asyncio.get_running_loop().create_future()


class WorkerPool:
    """The data plane as N processes; implements `server.DataPlane` for the controller."""

    def __init__(self, config: Config, count: int) -> None:
        if config.listen.endswith(":0"):
            raise ValueError("--workers > 1 needs a fixed listen port, not port 0")
        self.config = config
        self.count = count
        self.listening = False
        self.draining = False
        self.port = int(config.listen.rpartition(":")[2])
        self._workers: dict[int, _Worker] = {}
        self._routing: table.RoutingTable = table.build(config)
        self._retired: list[Row] = []  # counters of workers that died, so totals never drop
        self._retired_bad = 0
        self._retired_local: dict[str, int] = {}
        self._ctx = multiprocessing.get_context("spawn")

    # -- DataPlane --------------------------------------------------------------------------
    @property
    def stats(self) -> Stats:
        total = Stats()
        rows = [*self._retired]
        for worker in (*self._workers.values(), None):
            local = worker.local if worker is not None else self._retired_local
            for kind, n in local.items():
                total.local[kind] = total.local.get(kind, 0) + n
            if worker is not None:
                rows += worker.rows
                total.bad_requests += worker.bad_requests
        total.bad_requests += self._retired_bad
        for row in rows:
            _add(total.get(row[0], row[1], row[2]), row)
        return total

    def reconfigure(self, config: Config, routing: table.RoutingTable) -> None:
        self.config = config
        self.install(routing)

    def install(self, routing: table.RoutingTable) -> None:
        self._routing = routing
        message = ("table", self.config, routing.generation, _weights_of(routing),
                   _runs_of(routing))
        for worker in self._workers.values():
            self._send(worker, message)

    def endpoint_health(self) -> list[EndpointHealth]:
        """An endpoint is up while no worker has it ejected."""
        merged: dict[tuple[str, str, str], EndpointHealth] = {}
        for worker in self._workers.values():
            for h in worker.health:
                key = (h.route, h.version, h.endpoint)
                seen = merged.get(key)
                if seen is None:
                    merged[key] = h
                else:
                    merged[key] = EndpointHealth(
                        h.route, h.version, h.endpoint, seen.up and h.up,
                        max(seen.failures, h.failures), max(seen.ejections, h.ejections))
        return list(merged.values())

    def worker_usage(self) -> list[tuple[int, Usage]]:
        """(worker index, its resource use) of every live worker that has reported."""
        return [(w.index, w.usage) for w in self._workers.values() if w.usage is not None]

    # -- life cycle -------------------------------------------------------------------------
    async def start(self, routing: table.RoutingTable) -> None:
        self._routing = routing
        for index in range(self.count):
            self._spawn(index)
        await asyncio.wait_for(
            asyncio.gather(*(w.ready for w in self._workers.values())), START_TIMEOUT)
        self.listening = True
        log.info("%d workers listening on %s", self.count, self.config.listen)

    def _spawn(self, index: int) -> None:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(child, self.config, self._routing.generation, _weights_of(self._routing),
                  _runs_of(self._routing),
                  index, logging.getLogger().level),
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
                kind, payload = worker.conn.recv()
                if kind == "stats":
                    worker.rows, worker.bad_requests, worker.local, health, worker.usage = \
                        payload
                    worker.health = [EndpointHealth(*h) for h in health]
                elif kind == "ready" and not worker.ready.done():
                    worker.ready.set_result(None)
                elif kind == "stopped" and not worker.stopped.done():
                    worker.stopped.set_result(None)
        except (EOFError, OSError):
            self._lost(worker)

    def _lost(self, worker: _Worker) -> None:
        asyncio.get_running_loop().remove_reader(worker.conn.fileno())
        worker.conn.close()
        self._workers.pop(worker.index, None)
        self._retired += worker.rows
        self._retired_bad += worker.bad_requests
        for kind, n in worker.local.items():
            self._retired_local[kind] = self._retired_local.get(kind, 0) + n
        if not worker.stopped.done():
            worker.stopped.set_result(None)
        if not worker.ready.done():
            worker.ready.set_exception(RuntimeError(f"worker {worker.index} failed to start"))
        if not self.draining:
            log.error("worker %d (pid %s) died; starting a new one", worker.index,
                      worker.process.pid)
            worker.process.join(timeout=1)
            self._spawn(worker.index)

    def _send(self, worker: _Worker, message: tuple[Any, ...]) -> None:
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
            self._send(worker, ("stop", drain))
        try:
            await asyncio.wait_for(
                asyncio.gather(*(w.stopped for w in workers)), drain + 5.0)
        except TimeoutError:
            log.warning("workers did not stop in time: killing them")
        for worker in workers:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()


# -- inside a worker process --------------------------------------------------------------------
def worker_main(conn: Connection, config: Config, generation: int, weights: Weights,
                runs: dict[str, str],
                index: int, log_level: int) -> None:
    import uvloop

    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s %(levelname)s %(name)s[w{index}]: %(message)s")
    logsafe.install()
    # Ctrl-C or SIGHUP sent to the whole process group: the parent decides when we stop and
    # reloads on SIGHUP; a worker ignores both (SIGHUP is blocked until now, see _spawn).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    uvloop.run(_serve(conn, config, generation, weights, runs))


async def _serve(conn: Connection, config: Config, generation: int, weights: Weights,
                 runs: dict[str, str]) -> None:
    loop = asyncio.get_running_loop()
    server = ProxyServer(config, reuse_port=True)
    await server.start(table.build(config, generation, weights, runs))
    stop: asyncio.Future[float] = loop.create_future()
    usage = Sampler()

    def on_message() -> None:
        try:
            while conn.poll():
                kind, *args = conn.recv()
                if kind == "table":
                    new_config, gen, new_weights, new_runs = args
                    server.reconfigure(new_config,
                                       table.build(new_config, gen, new_weights, new_runs))
                elif kind == "stop" and not stop.done():
                    stop.set_result(float(args[0]))
        except (EOFError, OSError):
            if not stop.done():
                stop.set_result(config.timeouts.drain)  # the control plane is gone

    def report() -> None:
        try:
            health = [astuple(h) for h in server.endpoint_health()]
            stats = server.stats
            conn.send(("stats", (_rows(stats), stats.bad_requests, dict(stats.local), health,
                                 usage.sample())))
        except (OSError, ValueError):
            pass

    def on_sigterm() -> None:
        if not stop.done():
            stop.set_result(config.timeouts.drain)

    loop.add_reader(conn.fileno(), on_message)
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    conn.send(("ready", server.port))
    while not stop.done():
        report()
        await asyncio.wait([stop], timeout=REPORT_INTERVAL)
    await server.stop(stop.result())
    report()
    loop.remove_reader(conn.fileno())
    try:
        conn.send(("stopped", None))
    except (OSError, ValueError):
        pass
