"""Upstream side: keep-alive connection pools per endpoint and the response-parsing protocol."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from splitproxy.routing.table import Endpoint

if TYPE_CHECKING:
    from splitproxy.dataplane.http.downstream import DownstreamProtocol
    from splitproxy.dataplane.http.exchange import Exchange

log = logging.getLogger("splitproxy.upstream")

# Idle connections kept per endpoint. Generous: a cap below the number of concurrent requests
# makes the pool close and reopen connections under load (measured: p99 1.2 s instead of
# 47 ms at 512 client connections with a cap of 256); idle ones close after 30 s anyway.
MAX_IDLE_PER_ENDPOINT = 4096
# Connection attempts in progress per endpoint. A burst of new clients must not open hundreds
# of upstream connections at once: that overflows the upstream's accept queue (nginx's default
# backlog is 511) and costs a SYN retransmit, a 1 s stall. Requests beyond it wait for a
# connection to be released or for an attempt to finish, as in Envoy's connection pools.
MAX_CONNECTING = 64
WRITE_HIGH_WATER = 256 * 1024


class Overloaded(Exception):
    """Too many requests wait for an upstream connection, or one waited too long: the
    proxy sheds the request (503), it is not the endpoint's failure."""


class UpstreamConnection(asyncio.Protocol):
    """One connection to one endpoint; carries one exchange at a time (no upstream pipelining).

    Never pooled with anything unexpected on it (as nginx): a response is handed back to the
    pool only after the packet that ended it was parsed whole and nothing followed it; bytes
    that arrive while idle, a second message after the first, a body where none may be, an
    unparsable byte or a head over the limit close the connection instead.
    """

    __slots__ = (
        "pool", "transport", "parser", "exchange", "closed", "reused", "idle_since",
        "_status_reason", "_headers", "_got_bytes", "_tunnel_peer", "_feeding", "_after",
        "_extra", "_in_head", "_head_bytes",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._status_reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._got_bytes = False  # any response byte for the current exchange
        self._tunnel_peer: DownstreamProtocol | None = None
        self._feeding = False  # inside parser.feed_data
        self._after: bool | None = None  # a response ended in this packet: pool it after?
        self._extra = False  # bytes followed the end of the response in the same packet
        self._in_head = False
        self._head_bytes = 0

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = tcp = cast(asyncio.Transport, transport)
        tcp.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self._tunnel_peer is not None:
            self._tunnel_peer.write(data)
            return
        exchange = self.exchange
        if exchange is None:
            # An idle connection must stay silent; anything else makes it unusable.
            self.close()
            return
        self._got_bytes = True
        exchange.reads += 1
        self._feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._feeding = False
            if self.exchange is not None:
                self.exchange.upstream_upgraded(data[exc.args[0]:])
            else:
                self._extra = True
        except httptools.HttpParserError as exc:
            self._feeding = False
            self._extra = True
            detail = str(exc.__context__ or exc)
            if self.exchange is not None:
                self.exchange.upstream_failed("protocol", f"bad response from upstream: {detail}")
            self.close()
        else:
            self._feeding = False
            if self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > self.pool.max_head and self.exchange is not None:
                    self.exchange.upstream_failed(
                        "protocol", f"upstream response head over {self.pool.max_head} bytes")
                    self.close()
                    return
            if exchange.head_only_response and self.exchange is exchange:
                exchange.response_complete()
            elif exchange.out:
                exchange.flush()
        after = self._after
        if after is not None:
            self._after = None
            if after and not self._extra and not self.closed:
                self.pool.release(self)
            else:
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._tunnel_peer is not None:
            self._tunnel_peer.close_soon()
            self._tunnel_peer = None
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.upstream_lost(self._got_bytes, self.reused)

    def pause_writing(self) -> None:
        down = self._tunnel_peer or (self.exchange.down if self.exchange is not None else None)
        if down is not None:
            down.pause_reading_for(self)

    def resume_writing(self) -> None:
        down = self._tunnel_peer or (self.exchange.down if self.exchange is not None else None)
        if down is not None:
            down.resume_reading_for(self)

    # -- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.exchange is None:
            self._extra = True  # a second response after the one we asked for
        self._headers = []
        self._in_head = True
        self._head_bytes = 0

    def on_status(self, reason: bytes) -> None:
        self._status_reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self.exchange is not None:
            self.exchange.response_head(
                self.parser.get_status_code(),
                self._status_reason,
                self._headers,
                self.parser.should_keep_alive(),
            )

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self.exchange is not None:
            self.exchange.response_message_complete()

    # -- used by the exchange ---------------------------------------------------------------
    def start(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self._got_bytes = False
        self._extra = False

    def finish(self, reusable: bool) -> None:
        """The exchange is done with this connection: back to the pool if `reusable`, but
        only once the packet being parsed turned out to hold nothing more (see the class)."""
        self.exchange = None
        if self._feeding:
            self._after = reusable
        elif reusable and not self._extra:
            self.pool.release(self)
        else:
            self.close()

    def tunnel_to(self, peer: DownstreamProtocol) -> None:
        self._tunnel_peer = peer

    def reset_parser(self) -> None:
        """A new parser for a connection whose last response had no body the parser knew of."""
        self.parser = httptools.HttpResponseParser(self)

    def close(self) -> None:
        self.exchange = None
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()


class Pool:
    """One endpoint: idle keep-alive connections (newest first) and its passive health."""

    __slots__ = (
        "endpoint", "idle", "loop", "owner", "retired", "failures", "ejected",
        "ejections", "ejected_at", "_uneject", "connecting", "waiters",
    )

    def __init__(self, endpoint: Endpoint, owner: Pools) -> None:
        self.endpoint = endpoint
        self.idle: list[UpstreamConnection] = []
        self.loop = asyncio.get_running_loop()
        self.owner = owner  # limits and timeouts shared by every pool, changed on reload
        self.retired = False  # removed from the config: drain, take nothing new
        self.failures = 0  # consecutive connect failures and resets
        self.ejected = False
        self.ejections = 0  # times ejected recently; each ejection lasts twice the previous
        self.ejected_at = 0.0
        self._uneject: asyncio.TimerHandle | None = None
        self.connecting = 0
        # Requests waiting for a connection: resolved with a released one, or with None
        # meaning "an attempt slot is free: connect yourself".
        self.waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()

    def eject(self, base: float, cap: float) -> float:
        """Take the endpoint out of rotation; returns for how long."""
        now = self.loop.time()
        if self.ejections and now - self.ejected_at > 2 * cap:
            self.ejections = 0  # behaved for long enough: start from the base period again
        period: float = min(cap, base * 2.0**self.ejections)
        self.ejections += 1
        self.ejected = True
        self.ejected_at = now
        self.failures = 0
        self.close_idle()
        self._uneject = self.loop.call_later(period, self._return)
        return period

    def _return(self) -> None:
        self.ejected = False
        self._uneject = None
        log.info("endpoint %s returns to rotation", self.endpoint.key)

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
        _, proto = await asyncio.wait_for(
            self.loop.create_connection(
                lambda: UpstreamConnection(self), self.endpoint.host, self.endpoint.port
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
        conn.idle_since = self.loop.time()
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


class Pools:
    """Every endpoint's pool, kept across routing-table swaps so warm connections survive."""

    def __init__(self, connect_timeout: float, idle_timeout: float, *,
                 max_response_header: int = 64 * 1024, max_waiting: int = 1024,
                 wait_timeout: float = 5.0) -> None:
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
                pool = self._pools.pop(endpoint)
                pool.retired = True
                pool.close_idle()
                if pool._uneject is not None:
                    pool._uneject.cancel()
                log.info("endpoint %s removed: draining", endpoint.key)

    def get(self, endpoint: Endpoint) -> Pool:
        pool = self._pools.get(endpoint)
        if pool is None:
            pool = self._pools[endpoint] = Pool(endpoint, self)
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
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
