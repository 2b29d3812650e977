"""Wires the data plane: listening socket, routing table, pools, counters, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from splitproxy.config.models import Config
from splitproxy.dataplane.http.accesslog import protocol_for
from splitproxy.dataplane.http.downstream import DownstreamProtocol
from splitproxy.dataplane.http.runtime import Runtime, compile_table
from splitproxy.dataplane.http.upstream import Pools
from splitproxy.dataplane.procstats import Usage
from splitproxy.dataplane.stats import Stats
from splitproxy.routing import table

log = logging.getLogger("splitproxy.dataplane.server")

UPSTREAM_IDLE_TIMEOUT = 30.0  # below the 60-75 s keep-alive of common upstream servers


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    route: str
    version: str
    endpoint: str  # host:port
    up: bool
    failures: int  # consecutive connect failures / resets
    ejections: int


class DataPlane(Protocol):
    """What the control plane needs of the proxying side: one in-process `ProxyServer`, or
    the worker processes of `splitproxy run --workers N`."""

    listening: bool
    draining: bool

    @property
    def stats(self) -> Stats: ...
    def reconfigure(self, config: Config, routing: table.RoutingTable) -> None: ...
    def install(self, routing: table.RoutingTable) -> None: ...
    def endpoint_health(self) -> list[EndpointHealth]: ...
    def worker_usage(self) -> list[tuple[int, Usage]]: ...


class ProxyServer:
    """One data-plane process: accepts clients on `config.listen` and proxies them."""

    def __init__(self, config: Config, reuse_port: bool = False) -> None:
        self.config = config
        self.timeouts = config.timeouts
        self.limits = config.limits
        self.stats = Stats()
        self.reuse_port = reuse_port
        self.connections: set[DownstreamProtocol] = set()
        self.draining = False
        self.listening = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._pools: Pools | None = None
        self.runtime: Runtime

    async def start(self, routing: table.RoutingTable | None = None) -> None:
        """Listen; `routing` is the first table (default: the config's own weights)."""
        self.loop = asyncio.get_running_loop()
        self._pools = Pools(self.timeouts.connect, UPSTREAM_IDLE_TIMEOUT)
        self._configure_pools()
        self.install(routing or table.build(self.config))
        host, port = split_hostport(self.config.listen)
        self._server = await self.loop.create_server(
            lambda: protocol_for(self.config)(self), host, port, backlog=2048, reuse_address=True,
            reuse_port=self.reuse_port or None,
        )
        self.port: int = self._server.sockets[0].getsockname()[1]  # the real one when 0 asked
        self.listening = True
        self._sweeper = self.loop.create_task(self._sweep())
        log.info("proxy listening on %s:%d", host, self.port)

    async def _sweep(self) -> None:
        """Enforce client, idle and response timeouts for every connection, a few times a second.

        One task instead of a timer per request keeps the hot path free of timer handles; a
        timeout fires up to one tick late.
        """
        while True:
            t = self.timeouts  # a reload may shorten them
            tick = min(1.0, max(0.05, min(t.client_header, t.idle, t.response_header,
                                          t.client_body, t.upstream_read, t.client_send) / 5))
            await asyncio.sleep(tick)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.check_deadlines(now)

    def reconfigure(self, config: Config, routing: table.RoutingTable) -> None:
        """A reloaded config: new timeouts, limits and health rules, then the new table."""
        self.config = config
        self.timeouts = config.timeouts
        self.limits = config.limits
        self._configure_pools()
        self.install(routing)

    def _configure_pools(self) -> None:
        pools = self._pools
        if pools is not None:
            pools.connect_timeout = self.timeouts.connect
            pools.wait_timeout = self.timeouts.pool_wait
            pools.max_waiting = self.limits.max_pending
            pools.max_response_header = self.limits.max_response_header

    def install(self, routing: table.RoutingTable) -> None:
        """Swap in a new routing table; requests already routed keep their version."""
        if self._pools is None:
            return  # not started yet: start() installs the first table
        self.runtime = compile_table(routing, self._pools, self.stats, self.config.health,
                                     getattr(self, "runtime", None))


    def worker_usage(self) -> list[tuple[int, Usage]]:
        """No worker processes: this process's own use is the control process's."""
        return []

    def endpoint_health(self) -> list[EndpointHealth]:
        return [
            EndpointHealth(route.entry.name, version.name, pool.endpoint.key, not pool.ejected,
                           pool.failures, pool.ejections)
            for route in self.runtime.routes
            for version in route.versions.values()
            for pool in version.pools
        ]

    async def stop(self, drain: float | None = None) -> None:
        """Stop accepting; let requests in flight finish for up to `drain` seconds; close all."""
        if drain is None:
            drain = self.timeouts.drain
        if self._server is not None:
            self._server.close()
        self.listening = False
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
        deadline = self.loop.time() + drain
        # A connection in its lingering close has its answer already: it does not hold up
        # the shutdown, and is closed (not reset) below.
        while any(not c.lingering for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.lingering:
                conn.close_soon()
            else:
                conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._pools is not None:
            self._pools.close()
        await asyncio.sleep(0)
        log.info("proxy stopped")
