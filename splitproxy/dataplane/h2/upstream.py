"""HTTP/2 to upstreams: one multiplexed connection pool per endpoint (`H2Pool`), all of them in
one `H2Pools`, kept across routing-table swaps as the HTTP/1.1 pools are.

API (everything runs on the event loop; nothing blocks; `outcome.open_for_version` picks
the endpoint for a version, moving on when connects fail, as the HTTP/1.1 path does)::

    h2pools = H2Pools(loop, config.timeouts, config.limits)      # once per worker
    pool = version.next_pool()                     # the HTTP/1.1 `Pool`: health, probes
    h2pool = h2pools.get(pool)                     # the endpoint's HTTP/2 pool
    stream = await h2pool.open_stream(headers, end_stream=False, handler=handler,
                                      deadline=grpc_deadline)
    stream.send_data(chunk); stream.send_data(b"", end_stream=True)   # or send_trailers
    # handler.on_response / on_data (-> stream.ack(n)) / on_trailers / on_sent / on_end
    stream.reset()                                 # the client went away

or, without a handler, `await stream.response()`, `async for chunk in stream`,
`stream.trailers`, `await stream.closed()` (see `upstream_stream`).

`headers` are HTTP/2 request headers, pseudo-headers first; h2 drops connection-specific
ones (`connection`, `keep-alive`, `transfer-encoding`, ...), lower-cases names, and refuses
what it cannot send (`te` other than `trailers`, RFC 9113 8.2) as a `StreamError`.
`open_stream` raises `OSError` or `TimeoutError` (no connection: the endpoint's failure, as
with HTTP/1.1), `Overloaded` (every connection full and too many waiting: the proxy's own
503), `NotH2` (an `auto` endpoint chose HTTP/1.1 by ALPN: use the HTTP/1.1 pool) and
`StreamError` (a request h2 refuses to send). A stream then ends by `on_end(error)`; see
`outcome` for what counts against the version and the endpoint, and what may be retried.

Pooling: a stream goes on the open connection with the fewest streams below the upstream's
SETTINGS_MAX_CONCURRENT_STREAMS; when all are full, one more connection is opened (one at a
time per endpoint, at most `MAX_CONNECTIONS`), else the request waits up to
`timeouts.pool_wait`. A connection that received GOAWAY takes no new stream and closes when
its last stream ends; one without streams for `timeouts.idle` closes.

Passive health stays on the endpoint's HTTP/1.1 `Pool` (`health.PassiveHealth`): one record
per endpoint whatever the protocol, so ejection, active probes and `/status` work unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from splitproxy.config.models import Limits, Timeouts
from splitproxy.dataplane.h2.client import H2ClientConnection
from splitproxy.dataplane.h2.grpc import reduce_timeout
from splitproxy.dataplane.h2.upstream_stream import Headers, StreamHandler, UpstreamStream
from splitproxy.dataplane.http.busypoll import BusyPoll
from splitproxy.dataplane.http.pool import Overloaded, Pool
from splitproxy.dataplane.tls import client_context, server_hostname
from splitproxy.routing.table import Endpoint

log = logging.getLogger("splitproxy.h2.upstream")

# Connections per endpoint. Each carries up to the upstream's stream limit (grpc-go and
# nginx: 100 to 128); 8 x 100 streams is more than one worker's event loop keeps busy, and a
# bound keeps a misbehaving upstream (a limit of 1) from costing a connection per request.
MAX_CONNECTIONS = 8
# An `auto` endpoint that answered ALPN with HTTP/1.1 is asked again after this long.
ALPN_RECHECK = 60.0

H2_ALPN = ("h2",)
AUTO_ALPN = ("h2", "http/1.1")


class NotH2(Exception):
    """An `auto` endpoint speaks HTTP/1.1 (ALPN): send the request on the HTTP/1.1 pool."""


class H2Pool:
    """The HTTP/2 connections to one endpoint (see the module docstring)."""

    __slots__ = ("health", "endpoint", "owner", "loop", "conns", "waiters", "retired",
                 "_connecting", "not_h2_until")

    def __init__(self, health: Pool, owner: H2Pools) -> None:
        self.health = health  # the endpoint's passive-health record (and HTTP/1.1 pool)
        self.endpoint: Endpoint = health.endpoint
        self.owner = owner
        self.loop = owner.loop
        self.conns: list[H2ClientConnection] = []  # open, not going away
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.retired = False
        self._connecting: asyncio.Future[H2ClientConnection] | None = None
        self.not_h2_until = 0.0  # `auto`: ALPN chose HTTP/1.1; until then NotH2 at once

    @property
    def auto(self) -> bool:
        return self.endpoint.protocol == "auto"

    async def open_stream(self, headers: Headers, end_stream: bool = False,
                          handler: StreamHandler | None = None,
                          deadline: float = 0.0) -> UpstreamStream:
        """A new stream carrying `headers` (pseudo-headers first); `deadline`: a loop time the
        whole stream must end by (the gRPC deadline), 0 for none. See the module docstring
        for what it raises."""
        if self.health.retired:
            self.retire()  # the endpoint left the config: its HTTP/1.1 pool drains too
        if self.retired:
            raise Overloaded("endpoint removed from the config")
        waited = False
        while True:
            if self.not_h2_until and self.loop.time() < self.not_h2_until:
                raise NotH2(f"{self.endpoint.key} chose HTTP/1.1 by ALPN")
            conn = self._pick()
            if conn is not None:
                if deadline:
                    # The upstream gets the time the call has left now, after any wait for
                    # a connection or a stream (as a gRPC server passes its deadline on).
                    reduce_timeout(headers, max(0.0, deadline - self.loop.time()))
                stream = conn.open(headers, end_stream, handler)
                if stream is None:
                    continue  # out of stream ids: that connection goes away
                timeouts = self.owner.timeouts
                stream.arm(timeouts.response_header, timeouts.upstream_read, deadline)
                return stream
            if self._connecting is None and len(self.conns) < MAX_CONNECTIONS:
                await self._connect()
                continue
            if self._connecting is not None and not waited:
                # One connection attempt at a time: its streams are shared by everyone
                # waiting; its failure is theirs too (each request then counts it).
                waited = True
                await asyncio.shield(self._connecting)
                continue
            await self._wait()

    def _pick(self) -> H2ClientConnection | None:
        best: H2ClientConnection | None = None
        for conn in self.conns:
            if conn.available and (best is None or len(conn.streams) < len(best.streams)):
                best = conn
        return best

    async def _wait(self) -> None:
        owner = self.owner
        if owner.waiting >= owner.limits.max_pending:
            raise Overloaded("too many requests waiting for an upstream stream")
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.waiters.append(waiter)
        owner.waiting += 1
        try:
            await asyncio.wait_for(waiter, owner.timeouts.pool_wait)
        except TimeoutError:
            raise Overloaded(f"no upstream stream within {owner.timeouts.pool_wait:g}s"
                             ) from None
        finally:
            owner.waiting -= 1

    async def _connect(self) -> None:
        future: asyncio.Future[H2ClientConnection] = self.loop.create_future()
        self._connecting = future
        try:
            conn = await self._open_connection()
        except asyncio.CancelledError:
            # This request's task was cancelled: the others waiting on the attempt are not.
            future.set_exception(ConnectionError("connection attempt abandoned"))
            future.exception()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting for it
            raise
        else:
            future.set_result(conn)
            if self.retired:
                conn.go_away()  # removed from the config meanwhile: closes, nothing on it
                raise Overloaded("endpoint removed from the config")
            if conn.alpn not in (None, "h2"):
                conn.close()
                self.not_h2_until = self.loop.time() + ALPN_RECHECK
                raise NotH2(f"{self.endpoint.key} chose {conn.alpn} by ALPN")
            self.not_h2_until = 0.0
            self.conns.append(conn)
        finally:
            self._connecting = None
            self.capacity_changed()

    async def _open_connection(self) -> H2ClientConnection:
        """Raises OSError (ssl.SSLError for a failed handshake) or TimeoutError."""
        endpoint = self.endpoint
        owner = self.owner

        def factory() -> H2ClientConnection:
            return H2ClientConnection(self, owner.limits.max_response_header)

        tls = endpoint.tls
        if tls is None:
            coro = self.loop.create_connection(factory, endpoint.host, endpoint.port)
        else:
            alpn = AUTO_ALPN if self.auto else H2_ALPN
            coro = self.loop.create_connection(
                factory, endpoint.host, endpoint.port, ssl=client_context(tls, alpn),
                server_hostname=server_hostname(tls, endpoint.host))
        _, conn = await asyncio.wait_for(coro, owner.timeouts.connect)
        if tls is not None and conn.alpn is None:
            conn.close()
            raise ConnectionError(f"{endpoint.key}: no protocol agreed by ALPN (h2 expected)")
        return conn

    def capacity_changed(self) -> None:
        """A stream ended, a connection opened, or a limit changed: wake one waiter."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def forget(self, conn: H2ClientConnection) -> None:
        try:
            self.conns.remove(conn)
        except ValueError:
            pass
        self.capacity_changed()

    def close_idle(self, older_than: float | None = None) -> None:
        """Close connections without streams (idle longer than `older_than`), saying GOAWAY."""
        now = self.loop.time()
        for conn in list(self.conns):
            if not conn.streams and (older_than is None or now - conn.idle_since > older_than):
                conn.go_away()

    def retire(self) -> None:
        """Removed from the config: streams in flight finish, nothing new is opened."""
        self.retired = True
        for conn in list(self.conns):
            conn.go_away()
        self.conns.clear()

    @property
    def open_streams(self) -> int:
        return sum(len(conn.streams) for conn in self.conns)


class H2Pools:
    """Every endpoint's HTTP/2 pool, keyed by endpoint; settings replaced on reload."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeouts: Timeouts,
                 limits: Limits) -> None:
        self.loop = loop
        self.timeouts = timeouts
        self.limits = limits
        self.waiting = 0  # requests waiting for a stream, all pools
        # The server's busy poller (`performance.busy_poll`), kicked by the upstreams' reads
        # as by those of HTTP/1.1 connections; set by the server, None while off.
        self.busy_poll: BusyPoll | None = None
        self._pools: dict[Endpoint, H2Pool] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def update(self, timeouts: Timeouts, limits: Limits) -> None:
        """A reloaded config's timeouts and limits, for streams opened from now on."""
        self.timeouts = timeouts
        self.limits = limits

    def get(self, health: Pool) -> H2Pool:
        """The HTTP/2 pool of `health`'s endpoint (made on first use)."""
        pool = self._pools.get(health.endpoint)
        if pool is None or pool.health is not health:
            if pool is not None:
                pool.retire()  # the endpoint left the config and came back: a new record
            pool = self._pools[health.endpoint] = H2Pool(health, self)
            if self._sweeper is None:
                self._sweeper = self.loop.create_task(self._sweep())
        return pool

    def retain(self, keep: set[Endpoint]) -> None:
        """Drain the pools of endpoints no longer configured."""
        for endpoint in list(self._pools):
            if endpoint not in keep:
                self._pools.pop(endpoint).retire()

    async def _sweep(self) -> None:
        while True:
            idle = self.timeouts.idle
            await asyncio.sleep(min(5.0, idle))
            for endpoint, pool in list(self._pools.items()):
                if pool.health.retired:  # left the config (`Pools.retain`)
                    del self._pools[endpoint]
                    pool.retire()
                else:
                    pool.close_idle(idle)

    def close(self) -> None:
        """Shutdown: every connection says GOAWAY and closes once its streams ended."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            pool.retire()
        self._pools.clear()
