"""Wires the data plane: listening socket, routing table, pools, counters, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging

from splitproxy.config.models import Config, Timeouts
from splitproxy.dataplane.http import health
from splitproxy.dataplane.http.accesslog import protocol_for
from splitproxy.dataplane.http.downstream import DownstreamProtocol, sweep
from splitproxy.dataplane.http.pool import Pools
from splitproxy.dataplane.http.runtime import Runtime, compile_table
from splitproxy.dataplane.http.state import ServerState
from splitproxy.dataplane.plane import EndpointHealth
from splitproxy.dataplane.procstats import Usage
from splitproxy.dataplane.stats import Stats
from splitproxy.routing import table

log = logging.getLogger("splitproxy.dataplane.server")

UPSTREAM_IDLE_TIMEOUT = 30.0  # below the 60-75 s keep-alive of common upstream servers


def sweep_tick(t: Timeouts) -> float:
    """How often the sweeper looks: a fifth of the shortest timeout, within [0.05 s, 1 s]."""
    return min(1.0, max(0.05, min(t.client_header, t.idle, t.response_header, t.client_body,
                                  t.upstream_read, t.client_send) / 5))


class ProxyServer:
    """One data-plane process: accepts clients on `config.listen` and proxies them; a
    `plane.DataPlane`. Its connections see only its `ServerState`, made by `start()`."""

    def __init__(self, config: Config, reuse_port: bool = False) -> None:
        self.config = config
        self.stats = Stats()
        self.reuse_port = reuse_port
        self.listening = False
        self.port = 0  # the port bound by start(): the real one when the config asks for 0
        self._state: ServerState | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._pools: Pools | None = None

    @property
    def state(self) -> ServerState:
        if self._state is None:
            raise RuntimeError("the proxy server is not started")
        return self._state

    @property
    def draining(self) -> bool:
        return self._state is not None and self._state.draining

    @property
    def runtime(self) -> Runtime:
        """The compiled routing table requests are routed by now."""
        return self.state.runtime

    @property
    def connections(self) -> set[DownstreamProtocol]:
        return self.state.connections

    async def start(self, routing: table.RoutingTable | None = None) -> None:
        """Listen; `routing` is the first table (default: the config's own weights)."""
        loop = asyncio.get_running_loop()
        config = self.config
        self._pools = Pools(loop, config.timeouts.connect, UPSTREAM_IDLE_TIMEOUT)
        self._configure_pools()
        runtime = compile_table(routing or table.build(config), self._pools, self.stats,
                                config.health)
        state = self._state = ServerState(loop, runtime, config.timeouts, config.limits,
                                          self.stats, protocol_for(config))
        host, port = config.listen.host, config.listen.port
        self._server = await loop.create_server(
            state.accept, host, port, backlog=2048, reuse_address=True,
            reuse_port=self.reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.listening = True
        self._sweeper = loop.create_task(self._sweep(state))
        log.info("proxy listening on %s:%d", host, self.port)

    async def _sweep(self, state: ServerState) -> None:
        """Enforce client, idle and response timeouts for every connection, a few times a second.

        One task instead of a timer per request keeps the hot path free of timer handles; a
        timeout fires up to one tick late.
        """
        while True:
            await asyncio.sleep(sweep_tick(state.timeouts))  # a reload may shorten them
            sweep(state.connections, state.loop.time())

    def reconfigure(self, config: Config, routing: table.RoutingTable) -> None:
        """A reloaded config: new timeouts, limits, health rules and access log (for
        connections accepted from now on), then the new table."""
        self.config = config
        state = self._state
        if state is not None:
            state.timeouts = config.timeouts
            state.limits = config.limits
            state.protocol = protocol_for(config)
        self._configure_pools()
        self.install(routing)

    def _configure_pools(self) -> None:
        pools = self._pools
        if pools is not None:
            config = self.config
            pools.connect_timeout = config.timeouts.connect
            pools.wait_timeout = config.timeouts.pool_wait
            pools.max_waiting = config.limits.max_pending
            pools.max_response_header = config.limits.max_response_header

    def install(self, routing: table.RoutingTable) -> None:
        """Swap in a new routing table; requests already routed keep their version."""
        state = self._state
        if state is None or self._pools is None:
            return  # not started yet: start() installs the first table
        state.runtime = compile_table(routing, self._pools, self.stats, self.config.health,
                                      state.runtime)

    def worker_usage(self) -> list[tuple[int, Usage]]:
        """No worker processes: this process's own use is the control process's."""
        return []

    def endpoint_health(self) -> list[EndpointHealth]:
        state = self._state
        return health.report(state.runtime.routes) if state is not None else []

    async def stop(self, drain: float | None = None) -> None:
        """Stop accepting; let requests in flight finish for up to `drain` seconds; close all."""
        state = self._state
        if state is None:
            return  # never started: nothing listens, nothing to drain
        if drain is None:
            drain = state.timeouts.drain
        if self._server is not None:
            self._server.close()
        self.listening = False
        state.draining = True
        connections = state.connections
        for conn in list(connections):
            conn.drain()
        loop = state.loop
        deadline = loop.time() + drain
        # A connection in its lingering close has its answer already: it does not hold up
        # the shutdown, and is closed (not reset) below.
        while any(not c.lingering for c in connections) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(connections):
            if conn.lingering:
                conn.close_soon()
            else:
                conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._pools is not None:
            self._pools.close()
        await asyncio.sleep(0)
        state.access_lines.close()  # the lines of the connections just closed too
        log.info("proxy stopped")
