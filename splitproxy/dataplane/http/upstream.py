"""Upstream side: the protocol of one connection to an endpoint, which parses its answers and
hands them to the exchange it carries (the pools that keep these connections: `pool`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools

from splitproxy.dataplane.http.busypoll import UPSTREAM
from splitproxy.dataplane.http.flow import WRITE_HIGH_WATER
from splitproxy.dataplane.http.response import DISCARD

if TYPE_CHECKING:
    from splitproxy.dataplane.http.batch import WriteBatch
    from splitproxy.dataplane.http.downstream import DownstreamProtocol
    from splitproxy.dataplane.http.exchange import Exchange
    from splitproxy.dataplane.http.pool import Pool


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
        "_extra", "_in_head", "_head_bytes", "writes",
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
        # Where this connection writes: its exchange's server's batch (`batch`), or None.
        self.writes: WriteBatch | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = tcp = cast(asyncio.Transport, transport)
        tcp.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        peer = self._tunnel_peer
        if peer is not None:
            tunnel_busy = peer.state.busy_poll
            if tunnel_busy is not None:
                tunnel_busy.kick(UPSTREAM)
            peer.write(data)
            return
        exchange = self.exchange
        if exchange is None:
            # An idle connection must stay silent; anything else makes it unusable.
            self.close()
            return
        self._got_bytes = True
        busy = exchange.down.state.busy_poll
        if busy is not None:
            busy.kick(UPSTREAM)
        exchange.reads += 1
        self._feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._feeding = False
            if self.exchange is not None:
                self.exchange.upstream_upgraded(data[upgrade.args[0]:])
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
            if exchange.response_mode == DISCARD and self.exchange is exchange:
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

    def eof_received(self) -> bool | None:
        # The transport closes itself when this returns: what this turn wrote (a tunnel's
        # bytes from the client) goes out first, or the write batch drops it.
        writes = self.writes
        if writes is not None and self.transport is not None:
            writes.release(self.transport)
        return None

    def pause_writing(self) -> None:
        # The upstream does not take the request body (or tunnel bytes) as fast as the client
        # sends it: the client waits (flow control).
        down = self._tunnel_peer or (self.exchange.down if self.exchange is not None else None)
        if down is not None:
            down.flow.pause_reading_for(self)

    def resume_writing(self) -> None:
        down = self._tunnel_peer or (self.exchange.down if self.exchange is not None else None)
        if down is not None:
            down.flow.resume_reading_for(self)

    # -- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.exchange is None:
            self._extra = True  # a second response after the one we asked for
        self._headers = []
        self._status_reason = b""  # llhttp calls `on_status` only for a reason it read
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
        self.writes = exchange.down.state.writes
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

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            writes = self.writes
            if writes is not None and writes.gathering:
                writes.write(transport, data)
            else:
                transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        transport = self.transport
        if transport is not None and self.writes is not None:
            self.writes.writelines(transport, parts)
        elif transport is not None:
            transport.writelines(parts)

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
                if self.writes is not None:
                    # What this turn wrote reaches the socket first, as it would have
                    # unbatched (a tunnel's last bytes before the client closed).
                    self.writes.release(self.transport)
                self.transport.abort()
