"""One request/response pair: moves a request to an upstream connection and the answer back.

The downstream protocol owns the client socket and the order of exchanges; the upstream
connection owns the parser of the answer. An exchange is the glue between the two; its
phases, what it knows of its request and how it ends are in `lifecycle`, the rules for the
response head it passes on in `response`.
"""

from __future__ import annotations

import ssl
from typing import Final

from mypy_extensions import mypyc_attr

from splitproxy.dataplane.http import health
from splitproxy.dataplane.http.flow import PENDING_HIGH_WATER
from splitproxy.dataplane.http.headers import CONTINUE_100
from splitproxy.dataplane.http.lifecycle import (
    BUFFERING,
    CONNECTING,
    DONE,
    RESPONDING,
    SENT,
    STREAMING,
    Lifecycle,
)
from splitproxy.dataplane.http.local import LOCAL_ERRNOS
from splitproxy.dataplane.http.pool import Overloaded, Pool
from splitproxy.dataplane.http.response import (
    CHUNKED,
    DISCARD,
    RAW,
    BadResponse,
    final_head,
    head_bytes,
    read_response,
)
from splitproxy.dataplane.http.upstream import UpstreamConnection

# Interim (1xx) responses accepted before the final one; more is the version's protocol error
# (502). Each head is bounded by limits.max_response_header, their number by this. CPython's
# http.client allows 100 (_MAXINTERIMRESPONSES), Go's net/http 5; Envoy passes one on.
MAX_INTERIM: Final = 100


@mypyc_attr(allow_interpreted_subclasses=True)
class Exchange(Lifecycle):
    """One proxied request: the request side is called by the downstream protocol, the
    response side by the upstream connection, the deadlines by the sweeper."""

    __slots__ = ()

    # -- request side (called by the downstream protocol) ------------------------------------
    def start(self) -> None:
        """Begin: answer locally, or send the request to an endpoint of the chosen version."""
        if self.local is not None:
            self._finish_local(self.local)
            return
        request = self.request
        if request.continue_100:
            # Sent by the proxy itself, once this exchange's turn has come (never out of order).
            self.down.write(CONTINUE_100)
        if request.body_buffer and request.has_body and not self.request_done:
            self.phase = BUFFERING  # request_body/request_complete go on
            return
        self._choose_endpoint()

    def _choose_endpoint(self) -> None:
        self.phase = CONNECTING
        version = self.version
        assert version is not None
        pool = version.next_pool()
        if pool is None:
            self.fail(503, "connect", f"no healthy endpoint for version {version.name}",
                      count_error=False)
            return
        self.pool = pool
        conn = pool.take_idle()
        if conn is not None:
            self._attach(conn)
        else:
            self.down.loop.create_task(self._connect(pool))

    async def _connect(self, pool: Pool) -> None:
        """Open a connection; on failure try the version's other endpoints once each, as
        nginx's proxy_next_upstream does: nothing of the request has left the proxy yet."""
        version = self.version
        assert version is not None
        tries = 0
        while True:
            self.pool = pool
            try:
                conn = await pool.acquire()
                if conn.closed:  # a handed-over connection the upstream closed meanwhile
                    continue
                break
            except Overloaded as full:
                # Its own name: mypyc types an `as` name once per function, for its first clause.
                if self.phase is not DONE:
                    self._fail_locally("overload", str(full))
                return
            except (TimeoutError, OSError) as exc:
                if self.phase is DONE:
                    return
                if isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS:
                    self._fail_locally("resource", f"cannot open a connection to "
                                       f"{pool.endpoint.key}: {exc.strerror or exc}")
                    return
                kind = "tls" if isinstance(exc, ssl.SSLError) else "connect"
                self._count_error(kind)
                if kind == "tls":
                    health.record_failure(version, pool)  # an endpoint that refuses us
                tries += 1
                nxt = version.next_pool() if tries < len(version.pools) else None
                if nxt is None or nxt is pool:
                    if isinstance(exc, TimeoutError):
                        self.fail(504, "connect", f"connect to {pool.endpoint.key} timed out",
                                  count_error=False)
                    else:
                        self.fail(502, kind, f"cannot connect to {pool.endpoint.key}: "
                                  f"{exc.strerror or exc}", count_error=False)
                    return
                pool = nxt
        if self.phase is DONE:
            # The client went away while we connected: the fresh connection is clean.
            pool.release(conn)
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.up = conn
        self.phase = SENT
        conn.start(self)
        assert conn.transport is not None
        self.sent_at = self.down.state.clock()
        if self.pending:
            conn.writelines([self.request.head, *self.pending])
            self.pending = []
            self.pending_size = 0
            self.down.flow.resume_reading_for(self)
        else:
            conn.write(self.request.head)
        if self.request_done:
            self._arm_response_timer()

    def request_body(self, data: bytes) -> None:
        if self.phase is DONE:
            return
        if self.request.chunked:
            chunk = [b"%x\r\n" % len(data), data, b"\r\n"]
        else:
            chunk = [data]
        up = self.up
        if up is not None and up.transport is not None:
            up.writelines(chunk)
            return
        self.pending.extend(chunk)
        self.pending_size += len(data)
        if self.phase is BUFFERING and self.pending_size > self.request.body_buffer:
            self._choose_endpoint()  # larger than the buffer: stream the rest
        elif self.pending_size > PENDING_HIGH_WATER:
            self.down.flow.pause_reading_for(self)

    def request_complete(self) -> None:
        self.request_done = True
        if self.phase is DONE:
            return
        request = self.request
        if request.chunked:
            up = self.up
            if up is not None and up.transport is not None:
                up.write(b"0\r\n\r\n")
            else:
                self.pending.append(b"0\r\n\r\n")
        if self.phase is BUFFERING:
            self._choose_endpoint()
        elif self.up is not None:
            if request.has_body:
                # A streamed body: until its last byte the upstream waits for the client.
                self.sent_at = self.down.state.clock()
            self._arm_response_timer()

    def _arm_response_timer(self) -> None:
        if not self.deadline and not self.request.upgrade:
            state = self.down.state
            self.deadline = state.now() + state.response_timeout

    def check_deadline(self, now: float) -> None:
        """The sweeper's tick: the response head's deadline, then the upstream read timeout
        (nginx's proxy_read_timeout: between two reads, not for the whole response)."""
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            self.fail(504, "timeout", "upstream did not answer in time")
            return
        up = self.up
        if up is None or self.phase < RESPONDING or self.phase is DONE:
            return
        if self.reads != self.reads_seen or not self.read_deadline \
                or self.down.flow.holds(up.transport):
            self.reads_seen = self.reads
            self.read_deadline = now + self.down.state.timeouts.upstream_read
        elif now >= self.read_deadline:
            self.upstream_failed("timeout", "upstream stopped sending the response", 504)

    # -- response side (called by the upstream connection) -----------------------------------
    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], up_keep_alive: bool
    ) -> None:
        if self.phase is DONE:
            return
        request = self.request
        if 100 <= status < 200 and status != 101:
            # Interim answers (103 Early Hints, a stray 100) go to HTTP/1.1 clients as they are.
            self.interim += 1
            if self.interim > MAX_INTERIM:
                self.fail(502, "protocol",
                          f"upstream sent more than {MAX_INTERIM} interim (1xx) responses")
                return
            if request.client_11 and status != 100:
                self.down.write(head_bytes(status, reason, read_response(headers)[0], ()))
            return
        self.deadline = 0.0
        self.response_status = status
        pool = self.pool
        if pool is not None and pool.failures:
            pool.answered()  # passive health: an answer ends a run of failures
        # An upgrade refused: the upstream was told `Connection: upgrade`, it is not reused.
        # The client's connection goes on: what it sent after the request is parsed anew.
        self.up_close = not up_keep_alive or (request.upgrade and status != 101)
        try:
            head, self.response_mode, self.unframed, self.close_after = final_head(
                status, reason, headers, request.method_head, request.client_11,
                request.upgrade, self.close_after, self.down.state.draining,
                request.set_cookie, request.request_id)
        except BadResponse as exc:
            self.fail(502, "protocol", str(exc))
            return
        self.phase = RESPONDING
        self.out.append(head)

    def response_body(self, data: bytes) -> None:
        if self.phase is DONE or not self.response_status:  # an interim response's body: none
            return
        mode = self.response_mode
        if mode == RAW:
            self.out.append(data)
        elif mode == CHUNKED:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.up_close = True  # a body where none may be: never pass it on, never pool

    def flush(self) -> None:
        """Write what the last upstream packet produced (called after each parse)."""
        out = self.out
        if out:
            self.out = []
            if self.phase is RESPONDING:
                self.phase = STREAMING
            if len(out) == 1:
                self.down.write(out[0])
            elif len(out) < 8 and len(out[-1]) < 16384:
                # A head and a small body: one copy is cheaper than a vectored write.
                self.down.write(b"".join(out))
            else:
                self.down.writelines(out)

    def response_message_complete(self) -> None:
        if not self.response_status:
            return  # an interim response ended: the final one follows
        if self.response_status == 101 and self.request.upgrade:
            return  # the parser raises HttpParserUpgrade next: see upstream_upgraded
        if self.response_mode != DISCARD:
            self.response_complete()

    def response_complete(self) -> None:
        if self.phase is DONE:
            return
        if self.response_mode == CHUNKED:
            self.out.append(b"0\r\n\r\n")
        self.flush()
        up = self.up
        self.up = None
        if up is not None:
            if self.response_mode == DISCARD:
                up.reset_parser()
            # A slow client may have paused this connection's reading in the very packet
            # that ended the answer: never pool a paused connection (flow control).
            flow = self.down.flow
            if flow.paused_upstream is not None:
                flow.release(up.transport)
            up.finish(self.request_done and not self.up_close)
        if not self.request_done:
            # The client is still sending a body nobody will read: end the connection.
            self.close_after = True
        self._done(self.response_status)

    def upstream_upgraded(self, rest: bytes) -> None:
        """The upstream answered 101: from now on both sides are a byte tunnel."""
        up = self.up
        if up is None or self.response_status != 101 or not self.request.upgrade:
            self.upstream_failed("protocol", "unexpected protocol switch from upstream")
            if up is not None:
                up.close()
            return
        self.up = None
        self.flush()
        self._done(101)
        self.down.become_tunnel(up, rest)

    def upstream_failed(self, kind: str, detail: str, status: int = 502) -> None:
        if self.phase is DONE:
            return
        if self.phase is RESPONDING:
            # Nothing of the answer reached the client yet: it can still get a clean error.
            self.out = []
            self.phase = SENT
            self.response_mode = RAW
        if self.phase is STREAMING:
            self._count_error(kind)
            self._abort_client()
        else:
            self.fail(status, kind, detail)

    def upstream_lost(self, got_bytes: bool, reused: bool) -> None:
        """The upstream connection closed while carrying this exchange."""
        self.up = None
        if self.phase is DONE:
            return
        if self.phase >= RESPONDING:
            if self.unframed:
                self.response_complete()
                return
            self._count_error("reset")
            self._abort_client()
            return
        if reused and not got_bytes and not self.retried and not self.request.has_body \
                and self.pool is not None:
            # The keep-alive race: the upstream closed an idle pooled connection just as we
            # reused it. Not the endpoint's fault, and nothing of the request was consumed:
            # one try on a fresh connection to the same endpoint is safe.
            self.retried = True
            self.phase = CONNECTING
            self.down.loop.create_task(self._connect(self.pool))
            return
        self.fail(502, "reset", "upstream closed the connection before answering")

