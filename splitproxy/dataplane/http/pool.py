"""Keep-alive connection pools: one `Pool` per endpoint, all of them in one `Pools`, kept
across routing-table swaps so warm connections survive a reload or a rollout step."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Final

from splitproxy.dataplane.http.health import PassiveHealth
from splitproxy.dataplane.http.upstream import UpstreamConnection
from splitproxy.dataplane.tls import client_context, server_hostname
from splitproxy.routing.table import Endpoint

log = logging.getLogger("splitproxy.upstream")

# Idle connections kept per endpoint. Generous: a cap below the number of concurrent requests
# makes the pool close and reopen connections under load (measured: p99 1.2 s instead of
# 47 ms at 512 client connections with a cap of 256); idle ones close after 30 s anyway.
MAX_IDLE_PER_ENDPOINT: Final = 4096
# Connection attempts in progress per endpoint. A burst of new clients must not open hundreds
# of upstream connections at once: that overflows the upstream's accept queue (nginx's default
# backlog is 511) and costs a SYN retransmit, a 1 s stall. Requests beyond it wait for a
# connection to be released or for an attempt to finish, as in Envoy's connection pools.
# Not Final: a test patches it, which a compiled module's Final would silently ignore.
MAX_CONNECTING = 64


class Overloaded(Exception):
    """Too many requests wait for an upstream connection, or one waited too long: the
    proxy sheds the request (503), it is not the endpoint's failure."""


class Pool(PassiveHealth):
    """One endpoint: idle keep-alive connections (newest first); its passive health
    (`health.PassiveHealth`) is part of it, read per request as `pool.ejected`."""

    __slots__ = ("endpoint", "idle", "loop", "owner", "retired", "connecting", "waiters",
                 "probe_down")

    def __init__(self, endpoint: Endpoint, owner: Pools) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.idle: list[UpstreamConnection] = []
        self.loop = owner.loop
        self.owner = owner  # limits and timeouts shared by every pool, changed on reload
        self.retired = False  # removed from the config: drain, take nothing new
        self.connecting = 0
        # Requests waiting for a connection: resolved with a released one, or with None
        # meaning "an attempt slot is free: connect yourself".
        self.waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self.probe_down = False  # failing its active health check (`probe.Prober`)

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    @property
    def max_head(self) -> int:
        return self.owner.max_response_header

    async def acquire(self) -> UpstreamConnection:
        """A released connection or a new one; raises OSError, TimeoutError or Overloaded."""
        if self.connecting >= MAX_CONNECTING:
            owner = self.owner
            if owner.waiting >= owner.max_waiting:
                raise Overloaded("too many requests waiting for an upstream connection")
            waiter: asyncio.Future[UpstreamConnection | None] = self.loop.create_future()
            self.waiters.append(waiter)
            owner.waiting += 1
            try:
                # A timer only on this slow path: the request already waits for a slot.
                conn = await asyncio.wait_for(waiter, owner.wait_timeout)
            except TimeoutError:
                raise Overloaded(
                    f"no upstream connection within {owner.wait_timeout:g}s") from None
            finally:
                owner.waiting -= 1
            if conn is not None:
                return conn
        self.connecting += 1
        try:
            return await self.connect()
        finally:
            self.connecting -= 1
            self._wake(None)

    def _wake(self, conn: UpstreamConnection | None) -> bool:
        """Hand `conn` (or a free attempt slot) to the oldest live waiter."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    async def connect(self) -> UpstreamConnection:
        """A new connection; raises OSError or asyncio.TimeoutError."""
        endpoint = self.endpoint
        tls = endpoint.tls
        if tls is None:
            _, proto = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: UpstreamConnection(self), endpoint.host, endpoint.port
                ),
                self.owner.connect_timeout,
            )
            return proto
        # The handshake is part of the connect timeout; a failed one raises ssl.SSLError.
        _, proto = await asyncio.wait_for(
            self.loop.create_connection(
                lambda: UpstreamConnection(self), endpoint.host, endpoint.port,
                ssl=client_context(tls), server_hostname=server_hostname(tls, endpoint.host),
            ),
            self.owner.connect_timeout,
        )
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        conn.exchange = None
        if conn.closed or self.retired or len(self.idle) >= MAX_IDLE_PER_ENDPOINT:
            conn.close()
            return
        if self.waiters and self._wake(conn):
            conn.reused = True
            return
        conn.idle_since = self.owner.now()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def close_idle(self, older_than: float | None = None) -> None:
        now = self.loop.time()
        for conn in list(self.idle):
            if older_than is None or now - conn.idle_since > older_than:
                conn.close()

    def retire(self) -> None:
        """Removed from the config: requests in flight finish, nothing new is sent."""
        self.retired = True
        self.close_idle()
        self.forget_ejection()


class Pools:
    """Every endpoint's pool, kept across routing-table swaps so warm connections survive."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connect_timeout: float,
                 idle_timeout: float, *, max_response_header: int = 64 * 1024,
                 max_waiting: int = 1024, wait_timeout: float = 5.0) -> None:
        self.loop = loop
        self.now: Callable[[], float] = loop.time  # bound once, as `ServerState.now`
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_response_header = max_response_header
        self.max_waiting = max_waiting  # requests waiting for a connection, all pools
        self.wait_timeout = wait_timeout
        self.waiting = 0
        self._pools: dict[Endpoint, Pool] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def retain(self, keep: set[Endpoint]) -> None:
        """Drain endpoints no longer configured: requests in flight on them finish, idle
        connections close, nothing new is sent (the new routing table does not name them)."""
        for endpoint in list(self._pools):
            if endpoint not in keep:
                self._pools.pop(endpoint).retire()
                log.info("endpoint %s removed: draining", endpoint.name)

    def find(self, endpoint: Endpoint) -> Pool | None:
        """The endpoint's pool if the routing table names it; never makes one."""
        return self._pools.get(endpoint)

    def get(self, endpoint: Endpoint) -> Pool:
        pool = self._pools.get(endpoint)
        if pool is None:
            pool = self._pools[endpoint] = Pool(endpoint, self)
            if self._sweeper is None:
                self._sweeper = self.loop.create_task(self._sweep())
        return pool

    async def _sweep(self) -> None:
        # One timer for all pools instead of one per idle connection.
        while True:
            await asyncio.sleep(min(5.0, self.idle_timeout))
            for pool in self._pools.values():
                pool.close_idle(self.idle_timeout)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            pool.close_idle()
