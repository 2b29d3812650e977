"""Client side: one HTTP/1.1 protocol instance per client connection (uvloop + httptools).

Requests are parsed here, checked for ambiguous framing, routed to a version (`dispatch`) and
turned into `Exchange`s that run one at a time, in order, so pipelined requests are answered
in order. An upgrade the upstream accepts turns the connection into a byte tunnel. What the
connection reads and writes is bounded by flow control (`flow`); its transport, timer and
closing are in `connection`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final

import httptools

from splitproxy.dataplane.http.busypoll import CLIENT
from splitproxy.dataplane.http.connection import HEADER, IDLE, ClientConnection
from splitproxy.dataplane.http.dispatch import build_exchange
from splitproxy.dataplane.http.exchange import Exchange
from splitproxy.dataplane.http.flow import PIPELINE, UPGRADE, WRITE
from splitproxy.dataplane.http.headers import error_response
from splitproxy.dataplane.http.lifecycle import DONE, QUEUED, Lifecycle, RequestContext
from splitproxy.dataplane.http.request import Reject
from splitproxy.dataplane.http.state import ServerState

if TYPE_CHECKING:
    from collections.abc import Iterable

    from splitproxy.dataplane.http.upstream import UpstreamConnection

_CLOSING: Final = RequestContext(keep_alive=False)  # a fatal error's answer: the connection ends
# The HTTP/2 client preface (RFC 9113 3.4): a connection that starts with it speaks h2c by
# prior knowledge, and is handed to the HTTP/2 protocol (`dataplane.h2.server.adopt`).
H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# The header list of a connection between requests, shared: never appended to, as every
# request gets its own list from on_message_begin before its first on_header.
_NO_HEADERS: Final[list[tuple[bytes, bytes]]] = []
# The Reject a parser callback raised, for `data_received` to answer. httptools raises its own
# HttpParserCallbackError instead, whose `__context__` is the callback's exception only when
# the parse did not run inside the handler of another exception: an upstream's failure that
# refuses an upgrade parses the held bytes from inside one (`_upgrade_refused`), where the
# context is that failure. One list per process: a raise and its handling are one synchronous
# step of the event loop's one thread.
_REJECTED: Final[list[Reject]] = []
# The most of a packet kept past its own parse while the head it began is incomplete
# (`_start`): a longer one is dropped and the parser asked for the version.
START_KEPT: Final = 4096


def _rejected(reject: Reject) -> Reject:
    _REJECTED.append(reject)
    return reject


# Above this many open connections an idle connection's parser is dropped right after its
# answer, not at the sweeper's next tick: memory before the 4% of a request that making a
# new parser costs (10,000 connections opened within a tick would otherwise all hold one).
# Not Final: a test patches it, which a compiled module's Final would silently ignore.
PARK_AT = 1000


class DownstreamProtocol(ClientConnection):
    __slots__ = (
        "parser", "queue", "current", "receiving", "_url", "_headers", "in_head",
        "_head_bytes", "_head_size", "_body_bytes", "_tunnel", "_upgrading", "_held", "reads",
        "_reads_seen", "_body_deadline", "_start",
    )

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        # Made on the first byte of a request; dropped by the sweeper when it finds the
        # connection waiting for its next request (`_park`), so an idle keep-alive connection
        # holds no parser (920 bytes: the parser and its bound callbacks). Not dropped after
        # every answer: making one costs 4% of a request's instructions (cost gate); a busy
        # connection makes one at most once per tick. The queue of pipelined exchanges (an
        # empty deque is 760 bytes) is made when used.
        self.parser: httptools.HttpRequestParser | None = None
        self.queue: deque[Exchange] | None = None
        self.current: Exchange | None = None  # the exchange whose answer goes out now
        self.receiving: Exchange | None = None  # the exchange whose request body comes in now
        self._url = b""
        self._headers = _NO_HEADERS
        self.in_head = False
        self._head_bytes = 0  # raw bytes of a head still incomplete (a slow or huge one)
        self._head_size = 0  # parsed header bytes of the current head
        self._body_bytes = 0
        self._tunnel: UpstreamConnection | None = None
        self._upgrading: Exchange | None = None
        self._held = b""  # bytes after an upgrade request's head, until the upstream decides
        # Request-body progress for the body timeout: packets read, as the sweeper last saw.
        self.reads = 0
        self._reads_seen = 0
        self._body_deadline = 0.0
        # The last packet that came between two requests, until the head it began ends (then
        # b""): that head's request line is at its start and gives the HTTP version without
        # asking the parser (`request.request_line_version`). A second head in the same
        # packet, or one begun in the middle of a packet, finds b"" and asks.
        self._start = b""

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._accept(transport)
        if self.listener.tls and _alpn(transport) == "h2" and self.state.http2 is not None:
            self.state.http2(self, transport, b"")
            return
        state = self.state
        state.connections.add(self)
        if len(state.connections) > state.limits.max_connections:
            self._refuse_overload()
            return
        self._arm_timer(HEADER)

    def data_received(self, data: bytes) -> None:
        busy = self.state.busy_poll
        if busy is not None:
            busy.kick(CLIENT)
        if self._tunnel is not None:
            self._tunnel.write(data)
            return
        if self.broken:
            self._linger_data(data)
            return
        if self._upgrading is not None:
            self._held += data  # arrived before the pause took effect
            return
        self.reads += 1
        # The one HTTP/2 check on this path: the first packet of a connection (or the held
        # start of a preface that came in pieces).
        if self.reads == 1 and (data[:3] == b"PRI" or self._held):
            data = self._h2c(data)
            if not data:
                return
        if self.in_head or self.receiving is None:
            self._head_bytes += len(data)
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        if not self.in_head and self.receiving is None:
            self._start = data
        while True:
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                rest = data[upgrade.args[0]:]
                if self._upgrade_pending():  # set by the callbacks of this very feed
                    # Until the upstream answers 101 what follows is not tunnel data: hold it
                    # (and read nothing more); if it does not switch, it is parsed as requests.
                    self._held = rest
                    self.flow.pause_reading_for(UPGRADE)
                    return
                if rest and not self.broken:
                    data = rest  # an upgrade answered by the proxy itself: requests follow
                    self._start = b""
                    continue
                return
            except httptools.HttpParserCallbackError:
                if _REJECTED:
                    reason = _REJECTED.pop()
                    _REJECTED.clear()
                    self._reject(reason.status, reason.detail)
                    return
                raise
            except httptools.HttpParserError as exc:
                self._reject(400, f"malformed request: {exc}")
                return
            break
        if self.in_head:
            if self._head_bytes > self.state.limits.max_header:
                self._reject(431, "request head too large")
            elif len(self._start) > START_KEPT:
                self._start = b""  # a big packet is not held for a slow head: the parser asks
        else:
            self._start = b""  # no head began (empty lines) or it ended: nothing to hold

    def _h2c(self, data: bytes) -> bytes:
        """The first bytes of a connection that may begin the HTTP/2 preface: hand the
        connection over, or hold a preface's start until the rest comes (both: b""). Anything
        else is returned whole, to be parsed as HTTP/1.1."""
        data = self._held + data
        self._held = b""
        if data.startswith(H2_PREFACE) and self.state.http2 is not None:
            if self.transport is not None:
                self.state.http2(self, self.transport, data)
            return b""
        if H2_PREFACE.startswith(data):
            self._held = data
            self.reads = 0
            return b""
        return data

    def _upgrade_pending(self) -> bool:
        return self._upgrading is not None

    def eof_received(self) -> bool | None:
        # A client that half-closes after a complete request still gets its answer; one that
        # stops in the middle of a request is gone.
        self.client_eof = True
        if self.current is not None and self.receiving is None and not self.lingering:
            self.current.close_after = True
            return True
        transport = self.transport
        if transport is not None:
            # The transport closes itself when this returns: what this turn wrote (an answer
            # that ended in the same turn) goes out first, or the batch drops it.
            self.state.writes.release(transport)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.state.connections.discard(self)
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        if self.current is not None:
            self.state.writes.busy_change(-1)
        for ex in (self.current, self.receiving, *(self.queue or ())):
            if ex is not None:
                ex.client_gone()
        self.queue = None
        self.parser = None
        self.current = self.receiving = self._upgrading = None
        self._start = b""

    def pause_writing(self) -> None:
        tunnel = self._tunnel
        current = self.current
        up = tunnel or (current.up if current is not None else None)
        self.flow.client_stalled(up.transport if up is not None else None,
                                 current if tunnel is None else None, tunnel is not None)

    def resume_writing(self) -> None:
        self.flow.client_drained(self.current)
        if self.current is None and self.queue and not self.lingering:
            # Lingering, our output has ended (write_eof): what is queued is never answered.
            self._start_next()
        self.flow.resume_reading_for(WRITE)

    # -- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self.in_head = True
        if self.timer_kind == IDLE:
            self._arm_timer(HEADER)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        if self._head_size + len(self._url) > self.state.max_header:
            raise _rejected(Reject(431, "request head too large"))
        self._head_size = 0
        self.in_head = False
        self._head_bytes = 0
        self._body_bytes = 0
        if self.timer_kind == HEADER:
            self._cancel_timer()
        self._body_deadline = 0.0
        parser = self.parser
        assert parser is not None  # called by it
        start = self._start
        self._start = b""
        try:
            ex = build_exchange(self, parser, self._headers, self._url, start)
        except Reject as reject:
            raise _rejected(reject) from None
        self.receiving = ex
        if ex.request.upgrade:
            self._upgrading = ex
        if self.current is None and not self.flow.write_blocked:
            self.current = ex
            # Busy: an exchange in flight. The write batch gathers while several connections are.
            self.state.writes.busy_change(1)
            ex.start()
        else:
            self._enqueue(ex)
            self.flow.pause_reading_for(PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.receiving
        if ex is None:
            return
        max_body = self.state.limits.max_body
        if max_body is not None:
            self._body_bytes += len(body)
            if self._body_bytes > max_body:
                raise _rejected(Reject(413, f"request body larger than {max_body} bytes"))
        ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.receiving
        if ex is not None:
            self.receiving = None
            ex.request_complete()
            if self.current is None and not self.queue and not self.broken \
                    and self._upgrading is None:
                # Answered before its request was read to the end (the proxy's own answers,
                # given from the head): exchange_done found the request still coming and
                # left the timer to now. The connection waits for the next request.
                self._arm_timer(IDLE)

    def _reject(self, status: int, detail: str) -> None:
        """A fatal request error: answer in order, then close; nothing more is read."""
        self.broken = True
        self._start = b""
        self.state.stats.bad_requests += 1
        self._cancel_timer()
        self.flow.stop_reading()
        rx = self.receiving
        self.receiving = None
        if rx is not None and rx.phase is not QUEUED and rx.phase is not DONE:
            rx.close_after = True
            rx.fail(status, "protocol", detail, count_error=False)
            return
        context = _CLOSING
        if rx is not None and rx.phase is QUEUED and self.queue:  # answered in its place
            self.queue.remove(rx)
            rx.client_gone()
            context = RequestContext(keep_alive=False, request_id=rx.request.request_id)
        ex = Exchange(self, None, context, local=error_response(
            status, detail, True, request_id=context.request_id))
        if self.current is None and not self.flow.write_blocked:
            self.current = ex
            self.state.writes.busy_change(1)
            ex.start()
        else:
            self._enqueue(ex)

    def _enqueue(self, ex: Exchange) -> None:
        queue = self.queue
        if queue is None:
            queue = self.queue = deque()
        queue.append(ex)

    # -- the order of exchanges -------------------------------------------------------------
    def exchange_done(self, ex: Lifecycle) -> None:
        if self.current is not ex:
            return
        self.current = None
        self.state.writes.busy_change(-1)
        upgrading = self._upgrading is ex
        if upgrading and ex.response_status == 101:
            # become_tunnel follows at once, even while the server drains (it closes the
            # tunnel then): a lingering close here ended our output, and the tunnel wrote
            # after it.
            return
        if ex.close_after or (self.state.draining and not self.queue):
            self._linger()
            return
        if upgrading:
            self._upgrade_refused()
            if self.current is not None or self.broken:
                return
        if self.queue:
            if not self.flow.write_blocked:  # else resume_writing starts it
                self._start_next()
            return
        if self.receiving is None and not self.in_head:
            self._arm_timer(IDLE)
            if len(self.state.connections) > PARK_AT:
                self.loop.call_soon(self._park_idle)  # not now: maybe inside the parser

    def _start_next(self) -> None:
        queue = self.queue
        assert queue  # called with exchanges waiting
        nxt = queue.popleft()
        if self.current is None:
            self.state.writes.busy_change(1)
        self.current = nxt
        if not queue:
            self.flow.resume_reading_for(PIPELINE)
        nxt.start()

    def _upgrade_refused(self) -> None:
        """The upstream answered an upgrade request without switching: what the client sent
        after it is parsed as ordinary requests, never forwarded as it came."""
        held = self._held
        self._upgrading = None
        self._held = b""
        self.flow.resume_reading_for(UPGRADE)
        if held:
            self.data_received(held)

    def become_tunnel(self, up: UpstreamConnection, rest: bytes) -> None:
        held = self._held
        self._tunnel = up
        self._upgrading = None
        self._held = b""
        self.receiving = None
        self._cancel_timer()
        up.tunnel_to(self)
        if rest:
            self.write(rest)
        if held:
            up.write(held)
        self.flow.read_freely(discard=False)
        if self.state.draining:
            self.drain()  # as the tunnels open when the drain began: closed after the 101

    def drain(self) -> None:
        """Graceful shutdown: close now if idle, else after the current answer."""
        if self.current is None and self.receiving is None and not self.queue:
            self._close()

    # -- deadlines (the sweeper) ------------------------------------------------------------
    def check_deadlines(self, now: float) -> None:
        """Called by the server's sweeper a few times a second."""
        if self.deadline and now >= self.deadline:
            self._on_timer()
        elif self.timer_kind == IDLE and self.parser is not None:
            self._park()
        ex = self.current
        if ex is not None:
            ex.check_deadline(now)
        if self.receiving is not None and not self.in_head and not self.broken:
            self._check_body_progress(now)
        if self.flow.send_watch:
            self._check_send_progress(now)

    def _park_idle(self) -> None:
        if self.timer_kind == IDLE and self.parser is not None:
            self._park()

    def _park(self) -> None:
        """Between requests, nothing parsed of the next one (its first byte arms HEADER):
        the parser holds no state and is dropped, a new one is made when a request comes;
        the last request's header lines go too."""
        self.parser = None
        self._headers = _NO_HEADERS
        self._url = b""
        self._start = b""

    def _check_body_progress(self, now: float) -> None:
        """The request-body timeout (nginx's client_body_timeout): between two reads of the
        body, not for the whole body. Time the proxy itself stopped reading does not count."""
        if self.reads != self._reads_seen or self.flow.paused_by or not self._body_deadline:
            self._reads_seen = self.reads
            self._body_deadline = now + self.state.timeouts.client_body
        elif now >= self._body_deadline:
            self._reject(408, "request body not received in time")

    def _on_timer(self) -> None:
        kind = self._timer_fired()
        if kind is None:
            return
        if kind == HEADER and self.current is None:
            self.broken = True
            self.write(error_response(408, "request head not received in time", True))
        self._close()


def _alpn(transport: asyncio.BaseTransport) -> str | None:
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object.selected_alpn_protocol() if ssl_object is not None else None


def sweep(connections: Iterable[ClientConnection], now: float) -> None:
    """One tick of the timeout sweeper: every connection's deadlines against `now`."""
    for conn in list(connections):
        conn.check_deadlines(now)
