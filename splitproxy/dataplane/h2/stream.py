"""One HTTP/2 stream as the HTTP/1.1 machinery sees a client connection: the `down` of an
`Exchange` (write, writelines, abort, exchange_done, flow, state, loop). Routing, upstream
pools, retries, timeouts, counting and the access log are the HTTP/1.1 ones, unchanged.

What the exchange writes is an HTTP/1.1 answer (head, chunk framing); a C parser (httptools,
the same as for upstream answers) turns it back into a status, header fields and body bytes,
which go out as HEADERS and DATA frames within the client's flow-control windows. Reading
twice costs HTTP/2 a parse per answer; it costs HTTP/1.1 nothing, and every path an exchange
can take (a local error, a redirect, a cut) reaches the client the same way.
"""

from __future__ import annotations

from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING

import httptools

from splitproxy.dataplane.h2 import grpc
from splitproxy.dataplane.http.flow import ClientFlow
from splitproxy.dataplane.http.lifecycle import RESPONDING
from splitproxy.dataplane.http.peer import Downstream

if TYPE_CHECKING:
    from splitproxy.dataplane.h2.forward import H2Forward
    from splitproxy.dataplane.h2.server import H2Server
    from splitproxy.dataplane.http.exchange import Exchange
    from splitproxy.dataplane.http.lifecycle import Lifecycle
    from splitproxy.dataplane.http.upstream import UpstreamConnection

# Never sent in HTTP/2 (RFC 9113 8.2.2); the HTTP/1.1 framing the exchange wrote is undone here.
_DROPPED = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                      b"upgrade", b"te", b"trailer"})


# The kind of failure behind a status the proxy answers itself (`grpc.failure_code`); the
# others (404 no route, 413 too large, ...) are mapped by their HTTP status.
_KINDS = {502: "connect", 503: "connect", 504: "timeout", 408: "timeout"}


class _Discard:
    """Parser callbacks that keep nothing (the body of an answer already given)."""


class StreamFlow(ClientFlow):
    """Flow control of one stream. "Pausing the client's reading" holds back this stream's
    WINDOW_UPDATEs: the client stops sending its body once its window is spent. Nothing of the
    connection's socket is paused for one stream."""

    __slots__ = ("stream",)

    def __init__(self, stream: H2Stream) -> None:
        super().__init__(stream.conn.state.clock)
        self.stream = stream

    def pause_reading_for(self, owner: object) -> None:
        if owner not in self.paused_by:
            self.paused_by = (*self.paused_by, owner)

    def resume_reading_for(self, owner: object) -> None:
        paused = self.paused_by
        if owner in paused:
            paused = self.paused_by = tuple(o for o in paused if o != owner)
            if not paused and not self.frozen:
                self.stream.release_window()

    def stop_reading(self) -> None:
        self.frozen = True


class H2Stream(Downstream):
    """One request/response on an HTTP/2 connection (see the module docstring)."""

    # Not `state`, `loop`, `flow`, `client_ip`, `listener`, `identity`: `Downstream`'s.
    __slots__ = (
        "conn", "sid", "exchange",
        "grpc", "parser", "_headers", "out", "ended", "finished", "unacked", "body_bytes",
        "request_done", "blocked_since", "status", "method", "path", "received", "sent",
        "logged", "forward", "trailers", "reads", "_reads_seen", "_body_deadline",
    )

    def __init__(self, conn: H2Server, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        super().__init__(conn.state, StreamFlow(self), conn.listener, conn.client_ip,
                         conn.identity)
        self.exchange: Exchange | None = None
        # Set when the version speaks HTTP/2: the request goes there, not through `exchange`.
        self.forward: H2Forward | None = None
        self.trailers: list[tuple[bytes, bytes]] | None = None  # sent after `out`, with END
        self.grpc = False
        self.parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self.out: deque[bytes] = deque()  # body bytes the client's window does not take yet
        self.ended = False  # the answer is complete: END_STREAM once `out` is sent
        self.finished = False  # END_STREAM or RST_STREAM sent: nothing more goes out
        self.unacked = 0  # body bytes read but not yet given back to the client's window
        self.body_bytes = 0
        self.request_done = False
        self.blocked_since = 0.0  # when `out` began waiting for the client's window
        self.status = 0  # the final status sent (0: no head yet)
        # For the access log: the request's method and path (no query), bytes received (head
        # as HTTP/1.1 would count it, and body) and sent (the answer as the exchange wrote it).
        self.method = b""
        self.path = b""
        self.received = 0
        self.sent = 0
        self.logged = False
        # The request-body timeout (as HTTP/1.1's): DATA frames read, as the sweeper last saw.
        self.reads = 0
        self._reads_seen = 0
        self._body_deadline = 0.0

    # -- what the exchange calls (the `down` of an Exchange) -----------------------------------
    def write(self, data: bytes) -> None:
        if self.finished:
            return
        self.sent += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.abort()  # not an answer the proxy's own code writes: never pass it on

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.write(part)

    def abort(self) -> None:
        """Cut the answer: the client must see it was not complete (RST_STREAM)."""
        self.conn.reset(self, 0x2)  # INTERNAL_ERROR

    def exchange_done(self, ex: Lifecycle) -> None:
        self.ended = True
        self.conn.push(self)

    def become_tunnel(self, up: UpstreamConnection, rest: bytes) -> None:
        up.close()  # never: an HTTP/2 request does not upgrade (dispatch sees no Upgrade)
        self.abort()

    def close_soon(self) -> None:
        self.abort()

    # -- httptools callbacks: the HTTP/1.1 answer, re-framed ------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if self.grpc and status >= 400 and any(
                n.lower() == b"x-splitproxy-error" for n, _ in self._headers):
            self._grpc_error(status)
            return
        fields = [(b":status", b"%d" % status)]
        for name, value in self._headers:
            lname = name.lower()
            if lname not in _DROPPED:
                fields.append((lname, value))
        if status >= 200:
            self.status = status
        self.conn.send_headers(self, fields)

    def _grpc_error(self, status: int) -> None:
        """A gRPC call the proxy fails itself is answered as gRPC does: trailers-only, with
        the code of the failure (`grpc.failure_code`), never an HTTP error page."""
        ex = self.exchange
        kind = _KINDS.get(status, "")
        if ex is not None and ex.local is None and status == 503 and ex.stats is None:
            kind = "overload"  # the proxy's own 503 (`Lifecycle._fail_locally`)
        self.status = status
        extra = [(b"x-splitproxy-error", b"1")]
        if ex is not None and ex.request.request_id:
            extra.append((b"x-request-id", ex.request.request_id))
        fields = grpc.failure_headers(kind, status, HTTPStatus(status).phrase, extra)
        self.conn.send_headers(self, fields, True)
        self.parser = httptools.HttpResponseParser(_Discard())  # its body: not for gRPC

    def on_body(self, body: bytes) -> None:
        self.out.append(body)
        self.conn.push(self)

    # -- the request side (called by the connection) -------------------------------------------
    def request_body(self, data: bytes, flow_len: int) -> None:
        """Body bytes of this stream; their window goes back to the client unless the
        exchange holds them (flow control ties the client's sending to the upstream's reads)."""
        self.received += len(data)
        self.reads += 1
        forward = self.forward
        if forward is not None:
            # Credit comes back as the upstream takes the bytes (`give_back`); the padding at
            # once.
            if flow_len > len(data):
                self.conn.ack(self, flow_len - len(data))
            self.unacked += len(data)
            forward.request_body(data)
            return
        self.unacked += flow_len
        ex = self.exchange
        if ex is not None:
            ex.request_body(data)
        if not self.flow.paused_by:
            self.release_window()

    def give_back(self, n: int) -> None:
        """The HTTP/2 upstream took `n` bytes of this stream's body: the client may send as
        much more."""
        n = min(n, self.unacked)
        if n > 0 and not self.finished:
            self.unacked -= n
            self.conn.ack(self, n)

    def release_window(self) -> None:
        """Give back the body bytes not acknowledged yet; also when the stream is over (the
        server forgets it): they were taken from the connection's window too, which the
        library then opens alone. Kept back, a few held streams the client resets would shut
        the connection's window for all its other streams."""
        if self.unacked:
            self.conn.ack(self, self.unacked)
            self.unacked = 0

    def stalled(self, now: float) -> None:
        """The client's window does not take what is waiting: hold the upstream (its time
        does not count against the version)."""
        self.blocked_since = now
        ex = self.exchange
        up = ex.up if ex is not None else None
        # Not pausing the request side: the client may still send (tunnel=True semantics).
        self.flow.client_stalled(up.transport if up is not None else None, ex, True)

    def drained(self) -> None:
        self.blocked_since = 0.0
        self.flow.client_drained(self.exchange)

    def client_gone(self) -> None:
        """The client reset the stream (or the connection ended)."""
        self.finished = True
        ex = self.exchange
        self.exchange = None
        forward = self.forward
        if forward is not None:
            forward.client_gone()
        elif ex is not None:
            ex.client_gone()
        up = self.flow.paused_upstream
        if up is not None:
            self.flow.release(up)

    def check_deadlines(self, now: float, send_timeout: float, body_timeout: float) -> None:
        ex = self.exchange
        if ex is not None and self.forward is None:
            ex.check_deadline(now)
        if self.blocked_since and now - self.blocked_since >= send_timeout:
            # The client's window stayed shut: this stream, not the connection, is cut.
            self.abort()
            return
        if self.request_done or self.finished:
            return
        # Between two DATA frames, while the client may send (its credit all given back):
        # time the proxy or the upstream holds it does not count (as for HTTP/1.1).
        if self.reads != self._reads_seen or self.unacked or self.flow.paused_by \
                or not self._body_deadline:
            self._reads_seen = self.reads
            self._body_deadline = now + body_timeout
        elif now >= self._body_deadline:
            self._body_timed_out()

    def _body_timed_out(self) -> None:
        self.state.stats.bad_requests += 1
        forward = self.forward
        if forward is not None:
            forward.drop()
        ex = self.exchange
        if ex is not None and ex.phase < RESPONDING:
            ex.fail(408, "protocol", "request body not received in time", count_error=False)
        else:
            self.abort()
