"""Wires the data plane: listening socket, routing table, pools, counters, graceful shutdown."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Final

from splitproxy.config.models import Config, Timeouts
from splitproxy.config.tls import Listener
from splitproxy.dataplane import build, cpuidle
from splitproxy.dataplane.h2.bridge import bridged
from splitproxy.dataplane.h2.server import adopt
from splitproxy.dataplane.h2.upstream import H2Pools
from splitproxy.dataplane.http import probe
from splitproxy.dataplane.http.acceptor import Acceptor
from splitproxy.dataplane.http.accesslog import protocol_for
from splitproxy.dataplane.http.connection import ClientConnection
from splitproxy.dataplane.http.downstream import DownstreamProtocol, sweep
from splitproxy.dataplane.http.listener import ListenerInfo
from splitproxy.dataplane.http.pool import Pools
from splitproxy.dataplane.http.runtime import Runtime, compile_table
from splitproxy.dataplane.http.state import ServerState
from splitproxy.dataplane.plane import EndpointHealth
from splitproxy.dataplane.procstats import Usage
from splitproxy.dataplane.stats import CertificateProblem, Stats
from splitproxy.dataplane.tls import ServerTls
from splitproxy.routing import table

log = logging.getLogger("splitproxy.dataplane.server")

UPSTREAM_IDLE_TIMEOUT = 30.0  # below the 60-75 s keep-alive of common upstream servers


def sweep_tick(t: Timeouts) -> float:
    """How often the sweeper looks: a fifth of the shortest timeout, within [0.05 s, 1 s]."""
    return min(1.0, max(0.05, min(t.client_header, t.idle, t.response_header, t.client_body,
                                  t.upstream_read, t.client_send) / 5))


class ProxyServer:
    """One data-plane process: accepts clients on every `config.listen` address, proxies them; a
    `plane.DataPlane`. Its connections see only its `ServerState`, made by `start()`."""

    def __init__(self, config: Config, reuse_port: bool = False) -> None:
        self.config = config
        self.stats = Stats()
        self.reuse_port = reuse_port
        self.listening = False
        self.port = 0  # the port bound by start(): the real one when the config asks for 0
        self.ports: list[int] = []  # every listener's, in the order of `listen`
        self.tls: list[ServerTls | None] = []  # every listener's TLS contexts
        self._state: ServerState | None = None
        self._servers: list[Acceptor] = []
        self._tls_checker: asyncio.Task[None] | None = None
        self._bound: tuple[Listener, ...] = ()  # the listeners start() bound
        self._sweeper: asyncio.Task[None] | None = None
        self._pools: Pools | None = None
        self._busy_choice: cpuidle.Choice | None = None
        self._h2pools: H2Pools | None = None  # HTTP/2 upstreams (versions' `protocol`)
        self._prober: probe.Prober | None = None

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
    def connections(self) -> set[ClientConnection]:
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
        self._h2pools = H2Pools(loop, config.timeouts, config.limits)
        self._busy_polling()
        # h2c by prior knowledge and ALPN h2 on every listener.
        state.http2 = functools.partial(adopt, pools=self._h2pools)
        state.bridge = functools.partial(bridged, pools=self._h2pools)
        self._bound = config.listen
        self.tls = [ServerTls(lst.tls, lst.address) if lst.tls is not None else None
                    for lst in config.listen]
        https = next((i for i, lst in enumerate(config.listen) if lst.tls is not None), None)
        ports: dict[int, int] = {}
        # TLS listeners first: a redirect names the TLS port, the real one when it asked for 0.
        order = sorted(range(len(config.listen)), key=lambda i: config.listen[i].tls is None)
        try:
            for index in order:
                lst = config.listen[index]
                server_tls = self.tls[index]
                redirect = ports[https] if lst.redirect_to_https and https is not None else None
                info = ListenerInfo(lst.scheme.encode(), redirect, server_tls is not None)
                server = Acceptor(
                    loop, _factory(state, info),
                    server_tls.context if server_tls is not None else None,
                    # A handshake is part of the request head's time (asyncio's default: 60 s).
                    config.timeouts.client_header)
                self._servers.append(server)
                await server.listen(lst.address.host, lst.address.port, 2048, self.reuse_port)
                ports[index] = server.sockets[0].getsockname()[1]
                log.info("proxy listening on %s://%s:%d", lst.scheme, lst.address.host,
                         ports[index])
        except BaseException:
            for server in self._servers:
                server.close()
            raise
        log.info("data plane: %s", build.describe())
        self.ports = [ports[i] for i in range(len(config.listen))]
        self.port = self.ports[0]
        self.listening = True
        self._sweeper = loop.create_task(self._sweep(state))
        self._prober = probe.Prober(self._pools)
        self._prober.configure(config)
        if any(self.tls):
            self._tls_checker = loop.create_task(self._check_certificates())

    async def _check_certificates(self) -> None:
        """Reload certificates whose files changed (a stat per file per tick)."""
        while True:
            intervals = [t.tls.reload_interval for t in self.tls if t is not None]
            await asyncio.sleep(min(intervals))
            for server_tls in self.tls:
                if server_tls is not None:
                    server_tls.check()
            self._count_reloads()

    def _count_reloads(self) -> None:
        present = [t for t in self.tls if t is not None]
        self.stats.tls_reloads = {"success": sum(t.reloads for t in present),
                                  "error": sum(t.failures for t in present)}
        self.stats.tls_refused = {
            t.listener: CertificateProblem(t.listener, t.problem, t.problem_since)
            for t in present if t.problem is not None}

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
            state.configure(config.timeouts, config.limits)
            state.protocol = protocol_for(config)
        # Addresses need a restart; a listener's certificates and TLS policy do not (see
        # ServerTls.update). Matched by address: a changed list waits for the restart.
        for server_tls, bound, lst in zip(self.tls, self._bound, config.listen, strict=False):
            if server_tls is not None and lst.tls is not None and lst.address == bound.address:
                server_tls.update(lst.tls)
        self._count_reloads()
        self._configure_pools()
        self._busy_polling()
        if self._h2pools is not None:
            self._h2pools.update(config.timeouts, config.limits)
        self.install(routing)
        if self._prober is not None:
            self._prober.configure(config)

    def _busy_polling(self) -> None:
        """`performance.busy_poll` for the reads of every connection, both protocols; `auto`
        chosen for this machine (`cpuidle`), logged when the choice changes."""
        state = self._state
        if state is not None:
            choice = cpuidle.choose(self.config.performance.busy_poll)
            if choice != self._busy_choice:
                log.info("busy polling: %s (%s)",
                         f"{choice.window * 1e6:g}us" if choice.window else "off", choice.reason)
                self._busy_choice = choice
            state.busy_polling(choice.window)
            if self._h2pools is not None:
                self._h2pools.busy_poll = state.busy_poll

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
        if self._h2pools is not None:
            self._h2pools.retain({ep for e in routing.routes for eps in e.endpoints.values()
                                  for ep in eps})

    def worker_usage(self) -> list[tuple[int, Usage]]:
        """No worker processes: this process's own use is the control process's."""
        return []

    def busy_poll_window(self) -> float:
        choice = self._busy_choice
        return choice.window if choice is not None else 0.0

    def endpoint_health(self) -> list[EndpointHealth]:
        state = self._state
        return probe.report(state.runtime.routes, self._prober) if state is not None else []

    async def stop(self, drain: float | None = None) -> None:
        """Stop accepting; let requests in flight finish for up to `drain` seconds; close all."""
        state = self._state
        if state is None:
            return  # never started: nothing listens, nothing to drain
        if drain is None:
            drain = state.timeouts.drain
        for server in self._servers:
            server.close()
        if self._tls_checker is not None:
            self._tls_checker.cancel()
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
        if self._prober is not None:
            self._prober.close()
        if self._pools is not None:
            self._pools.close()
        if self._h2pools is not None:
            self._h2pools.close()
        for route in state.runtime.routes:
            if route.mirror is not None:
                route.mirror.close()
        await asyncio.sleep(0)
        state.access_lines.close()  # the lines of the connections just closed too
        log.info("proxy stopped")


# Client addresses kept per listener, so that connections from one address share one bytes
# object. Clients mostly come from few addresses (the application beside a sidecar, the load
# balancer in front of an edge proxy), and each held its own: 42 of the ~2,000 bytes an idle
# connection costs. Bounded: past it a new address is encoded per connection, as before, so
# many distinct clients cost at most this many entries (~150 bytes each).
PEER_ADDRESSES_KEPT: Final = 1024


def _factory(state: ServerState, info: ListenerInfo
             ) -> Callable[[tuple[str, int]], DownstreamProtocol]:
    addresses: dict[str, bytes] = {}

    def make(peer: tuple[str, int]) -> DownstreamProtocol:
        protocol = state.accept()  # the access log's class when it is on
        protocol.listener = info
        host = peer[0]
        address = addresses.get(host)
        if address is None:
            address = host.encode("latin-1")
            if len(addresses) < PEER_ADDRESSES_KEPT:
                addresses[host] = address
        protocol.client_ip = address
        return protocol
    return make
