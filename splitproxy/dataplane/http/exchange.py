"""One request/response pair: moves a request to an upstream connection and the answer back.

The downstream protocol owns the client socket and the order of exchanges; the upstream
connection owns the parser of the answer. An exchange is the glue between the two and the one
place where a request's fate (answered, failed, aborted) is decided and counted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from splitproxy.dataplane.http.headers import (
    CONTINUE_100,
    error_response,
)
from splitproxy.dataplane.http.local import LOCAL_ERRNOS, RETRY_AFTER, local_log
from splitproxy.dataplane.http.response import head_bytes, read_response
from splitproxy.dataplane.http.upstream import Overloaded, Pool, UpstreamConnection

if TYPE_CHECKING:
    from splitproxy.dataplane.http.downstream import DownstreamProtocol
    from splitproxy.dataplane.http.runtime import VersionRuntime

log = logging.getLogger("splitproxy.exchange")




# How the response body is framed towards the client; DISCARD: it must not have one (HEAD).
RAW, CHUNKED, DISCARD = 0, 1, 2

PENDING_HIGH_WATER = 256 * 1024

# Interim (1xx) responses accepted before the final one; more is the version's protocol error
# (502). Each head is bounded by limits.max_response_header, their number by this. CPython's
# http.client allows 100 (_MAXINTERIMRESPONSES), Go's net/http 5; Envoy passes one on.
MAX_INTERIM = 100


class Exchange:
    """State of one proxied request; created by the downstream protocol per request head."""

    __slots__ = (
        "down", "version", "head", "method_head", "client_11",
        "chunked_request", "request_done", "pending", "pending_size", "up", "started",
        "response_started", "response_status", "response_mode", "close_after", "start_time",
        "set_cookie", "local", "finished", "upgrade", "head_only_response", "retried", "up_close",
        "unframed", "continue_100", "deadline", "out", "flushed", "pool", "stats", "_has_body",
        "_interim", "awaiting_body", "body_buffer", "reads", "_reads_seen",
        "read_deadline", "sent_at", "held", "paused_at", "request_id",
    )

    def __init__(
        self,
        down: DownstreamProtocol,
        version: VersionRuntime | None,
        head: bytes,
        *,
        method_head: bool = False,
        client_11: bool = True,
        client_keep_alive: bool = True,
        chunked_request: bool = False,
        has_body: bool = False,
        upgrade: bool = False,
        set_cookie: bytes | None = None,
        local: bytes | None = None,
        synthetic: bool = False,
        start_time: float = 0.0,
        request_id: bytes = b"",
    ) -> None:
        self.down = down
        self.version = version
        self.head = head
        self.method_head = method_head
        self.client_11 = client_11
        self.chunked_request = chunked_request
        self._has_body = has_body
        self.request_done = False
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.up: UpstreamConnection | None = None
        self.pool: Pool | None = None  # the endpoint chosen, blamed for connect failures
        self.started = False
        self.response_started = False
        self.response_status = 0
        self.response_mode = RAW
        self.close_after = not client_keep_alive
        self.start_time = start_time
        self.set_cookie = set_cookie
        self.request_id = request_id  # X-Request-Id (b"": a request refused before it had one)
        self.local = local  # a response the proxy makes itself (errors), sent in order
        self.finished = False
        self.upgrade = upgrade
        self.head_only_response = False
        self.retried = False
        self.up_close = False  # the upstream said it closes after this response
        self.unframed = False  # the response body ends when the upstream closes
        self.continue_100 = False  # the client waits for "100 Continue" before its body
        self.deadline = 0.0  # for the upstream's response head; checked by the sweeper
        # Response bytes gathered while one upstream packet is parsed, written in one call.
        self.out: list[bytes] = []
        self.flushed = False  # some of the answer has been written to the client
        self._interim = 0  # interim (1xx) responses so far; inside one while no final status
        # Small bodies are read whole before an upstream connection is taken, so a slow
        # upload holds no upstream connection (nginx buffers request bodies too).
        self.body_buffer = 0  # up to this many body bytes; set by the downstream
        self.awaiting_body = False
        # Upstream packets of this response, and the count the sweeper last saw (read timeout).
        self.reads = 0
        self._reads_seen = 0
        self.read_deadline = 0.0
        # The upstream time the guard judges: from the request sent (`sent_at`; 0: not sent)
        # to the answer's last byte read, less the time reading was held for a slow client
        # (`held`, and `paused_at` while it is held; set by the downstream protocol).
        self.sent_at = 0.0
        self.held = 0.0
        self.paused_at = 0.0
        # Synthetic load is counted apart so analysis can leave it out.
        self.stats = (None if version is None
                      else version.synthetic_stats if synthetic else version.stats)
        if self.stats is not None:
            self.stats.in_flight += 1

    # -- request side (called by the downstream protocol) ------------------------------------
    def start(self) -> None:
        """Begin: answer locally, or send the request to an endpoint of the chosen version."""
        self.started = True
        if self.local is not None:
            self._finish_local(self.local)
            return
        version = self.version
        assert version is not None
        if self.continue_100:
            # Sent by the proxy itself, once this exchange's turn has come (never out of order).
            self.down.write(CONTINUE_100)
        if self.body_buffer and self._has_body and not self.request_done:
            self.awaiting_body = True  # request_body/request_complete go on
            return
        self._choose_endpoint()

    def _choose_endpoint(self) -> None:
        self.awaiting_body = False
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
            except Overloaded as exc:
                if not self.finished:
                    self._fail_locally("overload", str(exc))
                return
            except (TimeoutError, OSError) as exc:
                if self.finished:
                    return
                if isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS:
                    self._fail_locally("resource", f"cannot open a connection to "
                                       f"{pool.endpoint.key}: {exc.strerror or exc}")
                    return
                self._count_error("connect")
                tries += 1
                nxt = version.next_pool() if tries < len(version.pools) else None
                if nxt is None or nxt is pool:
                    if isinstance(exc, TimeoutError):
                        self.fail(504, "connect", f"connect to {pool.endpoint.key} timed out",
                                  count_error=False)
                    else:
                        self.fail(502, "connect", f"cannot connect to {pool.endpoint.key}: "
                                  f"{exc.strerror or exc}", count_error=False)
                    return
                pool = nxt
        if self.finished:
            # The client went away while we connected: the fresh connection is clean.
            pool.release(conn)
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.up = conn
        conn.start(self)
        transport = conn.transport
        assert transport is not None
        self.sent_at = self.down.loop.time()
        if self.pending:
            transport.writelines([self.head, *self.pending])
            self.pending = []
            self.pending_size = 0
            self.down.resume_reading_for(self)
        else:
            transport.write(self.head)
        if self.request_done:
            self._arm_response_timer()

    def request_body(self, data: bytes) -> None:
        if self.finished:
            return
        if self.chunked_request:
            chunk = [b"%x\r\n" % len(data), data, b"\r\n"]
        else:
            chunk = [data]
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.writelines(chunk)
            return
        self.pending.extend(chunk)
        self.pending_size += len(data)
        if self.awaiting_body and self.pending_size > self.body_buffer:
            self._choose_endpoint()  # larger than the buffer: stream the rest
        elif self.pending_size > PENDING_HIGH_WATER:
            self.down.pause_reading_for(self)

    def request_complete(self) -> None:
        self.request_done = True
        if self.finished:
            return
        if self.chunked_request:
            up = self.up
            if up is not None and up.transport is not None:
                up.transport.write(b"0\r\n\r\n")
            else:
                self.pending.append(b"0\r\n\r\n")
        if self.awaiting_body:
            self._choose_endpoint()
        elif self.up is not None:
            if self._has_body:
                # A streamed body: until its last byte the upstream waits for the client.
                self.sent_at = self.down.loop.time()
            self._arm_response_timer()

    def _arm_response_timer(self) -> None:
        if not self.deadline and not self.upgrade:
            self.deadline = self.down.loop.time() + self.down.server.timeouts.response_header

    def check_deadline(self, now: float) -> None:
        """The sweeper's tick: the response head's deadline, then the upstream read timeout
        (nginx's proxy_read_timeout: between two reads, not for the whole response)."""
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            self.fail(504, "timeout", "upstream did not answer in time")
            return
        up = self.up
        if up is None or not self.response_started or self.finished:
            return
        if self.reads != self._reads_seen or not self.read_deadline \
                or self.down.upstream_paused(up):
            self._reads_seen = self.reads
            self.read_deadline = now + self.down.server.timeouts.upstream_read
        elif now >= self.read_deadline:
            self.upstream_failed("timeout", "upstream stopped sending the response", 504)

    # -- response side (called by the upstream connection) -----------------------------------
    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], up_keep_alive: bool
    ) -> None:
        if self.finished:
            return
        if 100 <= status < 200 and status != 101:
            # Interim answers (103 Early Hints, a stray 100) go to HTTP/1.1 clients as they are.
            self._interim += 1
            if self._interim > MAX_INTERIM:
                self.fail(502, "protocol",
                          f"upstream sent more than {MAX_INTERIM} interim (1xx) responses")
                return
            if self.client_11 and status != 100:
                self.down.write(head_bytes(status, reason, read_response(headers)[0], ()))
            return
        self.deadline = 0.0
        self.response_status = status
        if self.pool is not None:
            self.pool.failures = 0
        self.up_close = not up_keep_alive
        if status == 101:
            # A switch nobody asked for, or one that does not say to what (RFC 9110 15.2.2:
            # a 101 must carry Upgrade), is never passed on nor pooled.
            if not self.upgrade:
                self.fail(502, "protocol", "upstream switched protocols without being asked")
                return
            if not any(name.lower() == b"upgrade" for name, _ in headers):
                self.fail(502, "protocol", "upstream sent 101 without an Upgrade header")
                return
        elif self.upgrade:
            # Refused: the upstream was told `Connection: upgrade`; it does not get reused.
            # The client's connection goes on: what it sent after the request is parsed anew.
            self.up_close = True
        kept, chunked, content_length = read_response(headers)
        extra: list[bytes] = []
        body_allowed = not (self.method_head or status in (204, 304))
        if status == 101:
            # The upgrade headers are hop-by-hop but are the point of this response.
            extra.extend(
                name + b": " + value for name, value in headers
                if name.lower() in (b"upgrade", b"connection")
            )
        elif body_allowed:
            if chunked is None:
                self.fail(502, "protocol", "upstream used a transfer coding other than chunked")
                return
            if content_length is not None and not chunked:
                extra.append(b"Content-Length: " + content_length)
            elif self.client_11:
                self.unframed = not chunked
                self.response_mode = CHUNKED
                extra.append(b"Transfer-Encoding: chunked")
            else:
                self.unframed = not chunked
                # An HTTP/1.0 client learns where an unframed body ends from the close.
                self.close_after = True
        else:
            if content_length is not None and self.method_head:
                extra.append(b"Content-Length: " + content_length)
            if self.method_head:
                # The parser cannot know a HEAD answer has no body; finish after this packet.
                # Body bytes that come anyway are dropped and the connection is not reused.
                self.head_only_response = True
                self.response_mode = DISCARD
        if status != 101:
            if self.down.draining:
                self.close_after = True
            if self.close_after:
                extra.append(b"Connection: close")
            elif not self.client_11:
                extra.append(b"Connection: keep-alive")
        if self.set_cookie is not None:
            extra.append(self.set_cookie)
        if self.request_id:
            extra.append(b"X-Request-Id: " + self.request_id)
        self.response_started = True
        self.out.append(head_bytes(status, reason, kept, extra))

    def response_body(self, data: bytes) -> None:
        if self.finished or not self.response_status:  # an interim response's body: none
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
            self.flushed = True
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
        if self.response_status == 101 and self.upgrade:
            return  # the parser raises HttpParserUpgrade next: see upstream_upgraded
        if not self.head_only_response:
            self.response_complete()

    def response_complete(self) -> None:
        if self.finished:
            return
        if self.response_mode == CHUNKED:
            self.out.append(b"0\r\n\r\n")
        self.flush()
        up = self.up
        self.up = None
        if up is not None:
            if self.head_only_response:
                up.reset_parser()
            # A slow client may have paused this connection's reading in the very packet
            # that ended the answer: never pool a paused connection.
            self.down.release_upstream_pause(up)
            up.finish(self.request_done and not self.up_close)
        if not self.request_done:
            # The client is still sending a body nobody will read: end the connection.
            self.close_after = True
        self._done(self.response_status)

    def upstream_upgraded(self, rest: bytes) -> None:
        """The upstream answered 101: from now on both sides are a byte tunnel."""
        up = self.up
        if up is None or self.response_status != 101 or not self.upgrade:
            self.upstream_failed("protocol", "unexpected protocol switch from upstream")
            if up is not None:
                up.close()
            return
        self.up = None
        self.flush()
        self._done(101)
        self.down.become_tunnel(up, rest)

    def upstream_failed(self, kind: str, detail: str, status: int = 502) -> None:
        if self.finished:
            return
        if self.response_started and not self.flushed:
            # Nothing of the answer reached the client yet: it can still get a clean error.
            self.out = []
            self.response_started = False
            self.set_cookie = None
            self.response_mode = RAW
        if self.response_started:
            self._count_error(kind)
            self._abort_client()
        else:
            self.fail(status, kind, detail)

    def upstream_lost(self, got_bytes: bool, reused: bool) -> None:
        """The upstream connection closed while carrying this exchange."""
        self.up = None
        if self.finished:
            return
        if self.response_started:
            if self.unframed:
                self.response_complete()
                return
            self._count_error("reset")
            self._abort_client()
            return
        if reused and not got_bytes and not self.retried and not self._has_body \
                and self.pool is not None:
            # The keep-alive race: the upstream closed an idle pooled connection just as we
            # reused it. Not the endpoint's fault, and nothing of the request was consumed:
            # one try on a fresh connection to the same endpoint is safe.
            self.retried = True
            self.down.loop.create_task(self._connect(self.pool))
            return
        self.fail(502, "reset", "upstream closed the connection before answering")

    # -- endings -----------------------------------------------------------------------------
    def fail(self, status: int, kind: str, detail: str, count_error: bool = True) -> None:
        """Answer with a proxy error, or cut the client if the answer had already begun."""
        if self.finished:
            return
        self.deadline = 0.0
        if count_error:
            self._count_error(kind)
        up = self.up
        self.up = None
        if up is not None:
            up.close()
        if self.response_started:
            self._abort_client()
            return
        if not self.request_done:
            self.close_after = True
        log.debug("%d %s", status, detail)
        self.response_started = True
        self.down.write(error_response(status, detail, self.close_after,
                                       request_id=self.request_id))
        self._done(status)

    def _fail_locally(self, kind: str, detail: str) -> None:
        """A failure of the proxy itself (overload, out of descriptors): 503 with Retry-After,
        counted in the proxy's own counters; the version's counters, its analysis and its
        endpoints' health never see it."""
        stats = self.stats
        if stats is not None:
            stats.in_flight -= 1
            self.stats = None
        self.down.server.stats.count_local(kind)
        if kind == "resource":
            local_log.warning(self.down.loop.time(), detail)
        if not self.request_done:
            self.close_after = True
        self.response_started = True
        self.down.write(error_response(503, detail, self.close_after, retry_after=RETRY_AFTER,
                                       request_id=self.request_id))
        self._done(503)

    def client_gone(self) -> None:
        """The client closed its connection before this exchange ended."""
        if self.finished:
            return
        self.deadline = 0.0
        up = self.up
        self.up = None
        if up is not None:
            up.close()
        self.finished = True
        if self.stats is not None:
            self.stats.client_aborts += 1
            self.stats.in_flight -= 1

    def _finish_local(self, response: bytes) -> None:
        if self._has_body and not self.request_done:
            self.close_after = True  # a body nobody will read is still on its way
        self.response_started = True
        self.down.write(response)
        self._done(int(response[9:12]))

    def _done(self, status: int) -> None:
        self.finished = True
        stats = self.stats
        if stats is not None:
            stats.in_flight -= 1
            now = self.down.loop.time()
            if self.paused_at:  # rare: the exchange ends while held for the client
                upstream = self._upstream_time(now)
            else:
                sent = self.sent_at
                upstream = now - sent - self.held if sent else -1.0
            stats.observe(status, now - self.start_time, upstream)
        self.down.exchange_done(self)

    def _abort_client(self) -> None:
        # Never a final chunk or a body that looks complete: the client must see the cut.
        self.finished = True
        stats = self.stats
        if stats is not None:
            stats.in_flight -= 1
            now = self.down.loop.time()
            stats.observe(502, now - self.start_time, self._upstream_time(now))
        self.down.abort()

    def _upstream_time(self, now: float) -> float:
        """What the version took (negative: the request never reached an upstream)."""
        if not self.sent_at:
            return -1.0
        if self.paused_at:
            self.held += now - self.paused_at
            self.paused_at = 0.0
        return now - self.sent_at - self.held

    def _count_error(self, kind: str) -> None:
        version = self.version
        if version is not None and self.stats is not None:
            self.stats.errors[kind] += 1
            if self.pool is not None and (kind == "connect" or kind == "reset"):
                version.record_failure(self.pool)
