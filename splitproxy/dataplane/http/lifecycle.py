"""An exchange's phases, what it knows of its request, and how it ends: answered, failed,
cut, or abandoned by the client. The one place where a request's fate is counted (its
version's counters, the proxy's own, the endpoint's passive health). `exchange.Exchange`
adds how it moves a request upstream and the answer back.

The phases, in order (an exchange moves forward, but for the two steps back drawn here)::

    QUEUED -> [BUFFERING] -> CONNECTING -> SENT -> RESPONDING -> STREAMING -> DONE
                                   ^         |  ^          |
                                   +---------+  +----------+
                     the keep-alive race: one         the upstream failed before a byte
                     retry on a fresh connection      of its answer was written: the
                                                      client still gets a clean 502/504

Any phase ends in DONE at once when the exchange fails, the client goes away, or the proxy
answers by itself (a local answer goes from QUEUED straight to DONE). BUFFERING: a small
request body is read whole first.
"""

from __future__ import annotations

import logging
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from mypy_extensions import mypyc_attr

from splitproxy.dataplane.http import health
from splitproxy.dataplane.http.headers import error_response
from splitproxy.dataplane.http.local import RETRY_AFTER, local_log
from splitproxy.dataplane.http.response import RAW

if TYPE_CHECKING:
    from splitproxy.dataplane.http.peer import Downstream
    from splitproxy.dataplane.http.pool import Pool
    from splitproxy.dataplane.http.runtime import VersionRuntime
    from splitproxy.dataplane.http.upstream import UpstreamConnection
    from splitproxy.dataplane.stats import VersionStats

log = logging.getLogger("splitproxy.exchange")


class Phase(IntEnum):
    QUEUED = 0  # created from a request head; waits for its turn (pipelined requests)
    BUFFERING = 1  # reads a small request body whole before taking an upstream connection
    CONNECTING = 2  # waits for an upstream connection (idle one, new one, retry)
    SENT = 3  # the request is on an upstream connection; waits for the response head
    RESPONDING = 4  # the response head is read; nothing of the answer is written yet
    STREAMING = 5  # the answer is being written to the client
    DONE = 6  # answered, failed, cut or abandoned: nothing more happens


# Module-level names: a global read on the hot path, not an attribute of the enum class.
QUEUED: Final = Phase.QUEUED
BUFFERING: Final = Phase.BUFFERING
CONNECTING: Final = Phase.CONNECTING
SENT: Final = Phase.SENT
RESPONDING: Final = Phase.RESPONDING
STREAMING: Final = Phase.STREAMING
DONE: Final = Phase.DONE


class RequestContext:
    """What an exchange knows of its request, fixed by dispatch when the head is read."""

    # A hand-written __init__, not a dataclass: the one dataclasses generates is Python code
    # made by exec, which mypyc cannot compile; it cost 4,000 instructions a request (callgrind).
    __slots__ = ("head", "start_time", "client_11", "keep_alive", "method_head", "has_body",
                 "chunked", "upgrade", "continue_100", "body_buffer", "set_cookie", "synthetic",
                 "request_id")

    def __init__(self, head: bytes = b"", start_time: float = 0.0, client_11: bool = True,
                 keep_alive: bool = True, method_head: bool = False, has_body: bool = False,
                 chunked: bool = False, upgrade: bool = False, continue_100: bool = False,
                 body_buffer: int = 0, set_cookie: bytes | None = None, synthetic: bool = False,
                 request_id: bytes = b"") -> None:
        self.head = head  # the head sent upstream (none for an answer the proxy makes itself)
        self.start_time = start_time  # when the head was read: the client's latency starts here
        self.client_11 = client_11  # an HTTP/1.1 client (else 1.0)
        self.keep_alive = keep_alive  # the client keeps the connection open after this answer
        self.method_head = method_head  # a HEAD request: the answer has no body
        self.has_body = has_body
        self.chunked = chunked  # the body comes chunked (and goes upstream chunked)
        self.upgrade = upgrade  # asks to switch protocols (WebSocket)
        self.continue_100 = continue_100  # the client waits for "100 Continue" before its body
        # Small bodies are read whole before an upstream connection is taken, so a slow upload
        # holds no upstream connection (nginx buffers request bodies too): up to this many bytes.
        self.body_buffer = body_buffer
        self.set_cookie = set_cookie  # the sticky cookie's Set-Cookie line, if one is due
        self.synthetic = synthetic  # synthetic load: counted apart so analysis can leave it out
        # X-Request-Id, returned on every answer (b"": a request refused before it had one).
        self.request_id = request_id


@mypyc_attr(allow_interpreted_subclasses=True)
class Lifecycle:
    """State of one proxied request; created by dispatch per request head."""

    __slots__ = (
        "down", "version", "request", "local", "stats", "phase", "request_done", "close_after",
        "pending", "pending_size", "up", "pool", "response_status", "response_mode", "up_close",
        "unframed", "retried", "deadline", "out", "interim", "reads", "reads_seen",
        "read_deadline", "sent_at", "held", "paused_at",
    )

    def __init__(self, down: Downstream, version: VersionRuntime | None,
                 request: RequestContext, local: bytes | None = None) -> None:
        self.down = down
        self.version = version
        self.request = request
        self.local = local  # a response the proxy makes itself (errors), sent in order
        self.phase = QUEUED
        self.request_done = False  # the request's last byte was read
        self.close_after = not request.keep_alive  # the client connection closes after it
        # Request body read while no upstream connection takes it.
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.up: UpstreamConnection | None = None
        self.pool: Pool | None = None  # the endpoint chosen, blamed for connect failures
        self.response_status = 0  # the final status of the answer (0: none yet)
        self.response_mode = RAW
        self.up_close = False  # the upstream said it closes after this response
        self.unframed = False  # the response body ends when the upstream closes
        self.retried = False  # one retry of the keep-alive race was spent
        self.deadline = 0.0  # for the upstream's response head; checked by the sweeper
        # Response bytes gathered while one upstream packet is parsed, written in one call.
        self.out: list[bytes] = []
        self.interim = 0  # interim (1xx) responses so far
        # Upstream packets of this response, and the count the sweeper last saw (read timeout).
        self.reads = 0
        self.reads_seen = 0
        self.read_deadline = 0.0
        # The upstream time the guard judges: from the request sent (`sent_at`; 0: not sent)
        # to the answer's last byte read, less the time reading was held for a slow client
        # (`held`, and `paused_at` while it is held; set by flow control).
        self.sent_at = 0.0
        self.held = 0.0
        self.paused_at = 0.0
        # Synthetic load is counted apart so analysis can leave it out.
        stats: VersionStats | None = (None if version is None else version.synthetic_stats
                                      if request.synthetic else version.stats)
        self.stats = stats
        if stats is not None:
            stats.in_flight += 1

    # -- endings ---------------------------------------------------------------------------
    def fail(self, status: int, kind: str, detail: str, count_error: bool = True) -> None:
        """Answer with a proxy error, or cut the client if the answer had already begun."""
        if self.phase is DONE:
            return
        self.deadline = 0.0
        if count_error:
            self._count_error(kind)
        up = self.up
        self.up = None
        if up is not None:
            up.close()
        if self.phase >= RESPONDING:
            self._abort_client()
            return
        if not self.request_done:
            self.close_after = True
        log.debug("%d %s", status, detail)  # an upstream's details: the log's only
        # The status the client gets, not the upstream's head that failed (a 101 without
        # Upgrade left there would have the connection wait for a tunnel that never comes).
        self.response_status = status
        self.down.write(error_response(status, detail if status < 500 else "upstream error",
                                       self.close_after, request_id=self.request.request_id))
        self._done(status)

    def _fail_locally(self, kind: str, detail: str) -> None:
        """A failure of the proxy itself (overload, out of descriptors): 503 with Retry-After,
        counted in the proxy's own counters; the version's counters, its analysis and its
        endpoints' health never see it."""
        stats = self.stats
        if stats is not None:
            stats.in_flight -= 1
            self.stats = None
        self.down.state.stats.count_local(kind)
        if kind == "resource":
            local_log.warning(self.down.loop.time(), detail)
        if not self.request_done:
            self.close_after = True
        self.down.write(error_response(503, detail if kind == "overload" else "out of resources",
                                       self.close_after, retry_after=RETRY_AFTER,
                                       request_id=self.request.request_id))
        self._done(503)

    def client_gone(self) -> None:
        """The client closed its connection before this exchange ended."""
        if self.phase is DONE:
            return
        self.deadline = 0.0
        up = self.up
        self.up = None
        if up is not None:
            up.close()
        self.phase = DONE
        if self.stats is not None:
            self.stats.client_aborts += 1
            self.stats.in_flight -= 1

    def _finish_local(self, response: bytes) -> None:
        if self.request.has_body and not self.request_done:
            self.close_after = True  # a body nobody will read is still on its way
        self.down.write(response)
        self._done(int(response[9:12]))

    def _done(self, status: int) -> None:
        self.phase = DONE
        stats = self.stats
        if stats is not None:
            stats.in_flight -= 1
            now = self.down.state.clock()
            if self.paused_at:  # rare: the exchange ends while held for the client
                upstream = self._upstream_time(now)
            else:
                sent = self.sent_at
                upstream = now - sent - self.held if sent else -1.0
            stats.observe(status, now - self.request.start_time, upstream)
        self.down.exchange_done(self)

    def _abort_client(self) -> None:
        # Never a final chunk or a body that looks complete: the client must see the cut.
        self.phase = DONE
        stats = self.stats
        if stats is not None:
            stats.in_flight -= 1
            now = self.down.state.clock()
            stats.observe(502, now - self.request.start_time, self._upstream_time(now))
        self.down.abort()

    def client_writable(self) -> None:
        """The client's socket drained after it held our writing (flow control): an exchange
        that holds its upstream's credit meanwhile (`h2.bridge`) returns it here."""

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
                health.record_failure(version, self.pool)
