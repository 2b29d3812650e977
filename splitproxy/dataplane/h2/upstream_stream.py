"""One HTTP/2 stream to an upstream: what the proxy sends on it, what comes back, and how it
ends. The connection that carries it is `client.H2ClientConnection`; the pool that picks the
connection is `upstream.H2Pool`.

Two ways to consume a response, on the same object:

* callbacks (the data plane's way): give `open_stream` a `StreamHandler`; every event of the
  response is one call, in order, on the event loop, and the handler returns the credit of
  each DATA chunk with `stream.ack(n)` once it has passed the bytes on;
* awaitables (tests, tools): without a handler the stream buffers its own events:
  `await stream.response()`, `async for chunk in stream` (credit returned as each chunk is
  taken), `stream.trailers`, `await stream.closed()`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, cast

import h2.exceptions
import h2.utilities

if TYPE_CHECKING:
    from splitproxy.dataplane.h2.client import H2ClientConnection

Headers = list[tuple[bytes, bytes]]


class EndKind(StrEnum):
    """Why a stream ended without its response: the kinds of `stats.ERROR_KINDS`."""

    RESET = "reset"  # the upstream reset the stream, or its connection was lost
    PROTOCOL = "protocol"  # the upstream broke the protocol (a bad frame, bad headers)
    TIMEOUT = "timeout"  # the response (head or next bytes) did not come in time
    CANCELLED = "cancelled"  # the proxy reset it (`reset`): the client went away, say


class StreamError(Exception):
    """A stream that ended abnormally. `retryable`: the upstream never processed the request
    (REFUSED_STREAM, or above a GOAWAY's last stream id, RFC 9113 8.7), so it may be sent
    again, on another connection; `refused`: the upstream refused it (counts against the
    endpoint, as a failed connect does); `error_code`: the RST_STREAM or GOAWAY code."""

    def __init__(self, kind: EndKind, detail: str, retryable: bool = False,
                 refused: bool = False, error_code: int = 0) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.retryable = retryable
        self.refused = refused
        self.error_code = error_code


_REQUEST = h2.utilities.HeaderValidationFlags(
    is_client=True, is_trailer=False, is_response_header=False, is_push_promise=False)
_TRAILERS = _REQUEST._replace(is_trailer=True)


def checked(headers: Headers, trailers: bool) -> Headers:
    """`headers` as h2 would send them: connection-specific ones dropped, names lower-cased
    (RFC 9113 8.2.2); raises StreamError for what cannot be sent at all (pseudo-headers
    missing, repeated or after regular ones, in trailers, `te` other than `trailers`)."""
    flags = _TRAILERS if trailers else _REQUEST
    try:
        return cast(Headers, list(h2.utilities.validate_outbound_headers(
            h2.utilities.normalize_outbound_headers(headers, flags), flags)))
    except (h2.exceptions.ProtocolError, ValueError) as exc:
        raise StreamError(EndKind.PROTOCOL, f"request not sendable: {exc}") from None


class StreamHandler(Protocol):
    """Receives one stream's response events (all on the event loop, in this order:
    `on_response`, `on_data`..., `on_trailers`?, `on_end`)."""

    def on_response(self, status: int, headers: Headers, end_stream: bool) -> None:
        """The final response head (interim 1xx heads are not passed on)."""

    def on_data(self, data: bytes, end_stream: bool) -> None:
        """A chunk of the body: call `stream.ack(len(data))` once it is passed on."""

    def on_trailers(self, trailers: Headers) -> None:
        """The trailers, which end the stream (gRPC's `grpc-status` is here)."""

    def on_sent(self, n: int) -> None:
        """`n` more bytes of request body left for the upstream (flow control permitting):
        the credit to return to the client that sent them."""

    def on_end(self, error: StreamError | None) -> None:
        """The stream is over: complete (None) or not; called exactly once."""


class UpstreamStream:
    """One request on an upstream HTTP/2 connection (see the module docstring)."""

    __slots__ = ("conn", "stream_id", "handler", "status", "headers", "trailers", "error",
                 "ended", "out", "out_size", "out_end", "out_trailers", "sent_bytes",
                 "unacked", "done_sending", "last_read", "deadline", "response_deadline",
                 "got_response", "read_timeout", "_timer", "_events", "_waiter", "_drained")

    def __init__(self, conn: H2ClientConnection, stream_id: int,
                 handler: StreamHandler | None) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.handler = handler
        self.status = 0
        self.headers: Headers = []
        self.trailers: Headers | None = None
        self.error: StreamError | None = None
        self.ended = False
        # Request body accepted but not yet framed (the upstream's window is closed).
        self.out: deque[bytes] = deque()
        self.out_size = 0
        self.out_end = False  # the body's end was given (after `out` drains)
        self.out_trailers: Headers | None = None
        self.sent_bytes = 0  # body bytes framed so far
        self.unacked = 0  # flow-controlled bytes delivered, not yet acked by the consumer
        self.done_sending = False  # the request's END_STREAM went out
        self.last_read = conn.loop.time()  # for the read timeout
        self.deadline = 0.0  # loop time the whole stream must end by (grpc-timeout); 0: none
        self.response_deadline = 0.0  # loop time the response head must come by
        self.got_response = False
        self.read_timeout = 0.0  # between two reads of the body; 0: none
        self._timer: asyncio.TimerHandle | None = None
        # Awaitable mode only.
        self._events: deque[tuple[str, object]] | None = None if handler else deque()
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    # -- sending (the request) ---------------------------------------------------------------
    def send_data(self, data: bytes, end_stream: bool = False) -> None:
        """Queue request body; it is framed as the upstream's windows allow (`on_sent`).
        The caller bounds what it queues: a proxy grants its client credit from `on_sent`."""
        if self.ended or self.out_end or self.done_sending:
            return
        if data:
            self.out.append(data)
            self.out_size += len(data)
        self.out_end = end_stream
        self.conn.sending[self.stream_id] = self
        self.conn.pump()

    def send_trailers(self, trailers: Headers) -> None:
        """End the request with trailers (after the queued body); raises StreamError for
        trailers that cannot be sent (pseudo-headers)."""
        if self.ended or self.out_end or self.done_sending:
            return
        self.out_trailers = checked(trailers, trailers=True)
        self.out_end = True
        self.conn.sending[self.stream_id] = self
        self.conn.pump()

    async def drain(self, below: int = 0) -> None:
        """Wait until at most `below` bytes of body wait to be framed (awaitable mode's
        backpressure; the callback mode has `on_sent`)."""
        while self.out_size > below and not self.ended:
            self._drained = self.conn.loop.create_future()
            await self._drained

    def reset(self, code: int = 0x8) -> None:
        """Abandon the stream (RST_STREAM, CANCEL by default); no callback follows."""
        if self.ended:
            return
        self.handler = None
        self.conn.reset_stream(self, code)
        self._end(StreamError(EndKind.CANCELLED, "reset by the proxy", error_code=code))

    # -- deadlines ---------------------------------------------------------------------------
    def arm(self, response_timeout: float, read_timeout: float, deadline: float = 0.0) -> None:
        """The response head must come within `response_timeout`, each read within
        `read_timeout` of the last (unless the consumer holds credit: then the upstream
        waits for us, not we for it), and everything by `deadline` (a loop time; 0: none)."""
        now = self.conn.loop.time()
        self.response_deadline = now + response_timeout
        self.read_timeout = read_timeout
        self.deadline = deadline
        self._rearm(now)

    def _rearm(self, now: float) -> None:
        if self.ended:
            return
        due = 0.0
        if not self.got_response:
            due = self.response_deadline
        elif self.read_timeout:
            due = self.last_read + self.read_timeout
        if self.deadline and (not due or self.deadline < due):
            due = self.deadline
        if due:
            self._timer = self.conn.loop.call_at(max(due, now), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.ended:
            return
        now = self.conn.loop.time()
        if self.deadline and now >= self.deadline:
            self.conn.time_out(self, "deadline exceeded")
        elif not self.got_response and now >= self.response_deadline:
            self.conn.time_out(self, "upstream did not answer in time")
        elif self.got_response and now >= self.last_read + self.read_timeout:
            if self.unacked:
                self.last_read = now  # held by our consumer, not slow upstream
                self._rearm(now)
            else:
                self.conn.time_out(self, "upstream stopped sending the response")
        else:
            self._rearm(now)

    # -- credit ------------------------------------------------------------------------------
    def ack(self, n: int) -> None:
        """The consumer passed on `n` bytes: the upstream may send that much more."""
        n = min(n, self.unacked)
        if n > 0:
            self.unacked -= n
            self.conn.ack(self, n)

    # -- called by the connection ------------------------------------------------------------
    def sent(self, n: int) -> None:
        self.sent_bytes += n
        if self.handler is not None:
            self.handler.on_sent(n)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def got_head(self, status: int, headers: Headers, end_stream: bool) -> None:
        self.got_response = True
        self.status = status
        self.headers = headers
        self.response_deadline = 0.0
        if self._timer is not None:  # from the head's deadline to the read timeout
            self._timer.cancel()
            self.last_read = self.conn.loop.time()
            self._rearm(self.last_read)
        if self.handler is not None:
            self.handler.on_response(status, headers, end_stream)
        else:
            self._push("head", None)

    def got_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        self.last_read = self.conn.loop.time()
        self.unacked += len(data)
        if flow_length > len(data):  # padding: nobody consumes it
            self.conn.ack(self, flow_length - len(data))
        if self.handler is not None:
            self.handler.on_data(data, end_stream)
        else:
            self._push("data", data)

    def got_trailers(self, trailers: Headers) -> None:
        self.trailers = trailers
        if self.handler is not None:
            self.handler.on_trailers(trailers)

    def _end(self, error: StreamError | None) -> None:
        """The stream is over (the connection forgot it already)."""
        if self.ended:
            return
        self.ended = True
        self.error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.unacked:
            # Credit a consumer never returned: the connection's window must not shrink.
            self.conn.ack(self, self.unacked)
            self.unacked = 0
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        handler = self.handler
        self.handler = None
        if handler is not None:
            handler.on_end(error)
        elif self._events is not None:
            self._push("end", error)

    # -- awaitable mode ----------------------------------------------------------------------
    def _push(self, kind: str, value: object) -> None:
        assert self._events is not None
        self._events.append((kind, value))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _next(self) -> tuple[str, object]:
        events = self._events
        if events is None:
            raise RuntimeError("a stream with a handler is consumed by its handler")
        while not events:
            self._waiter = self.conn.loop.create_future()
            await self._waiter
        return events[0]

    async def response(self) -> tuple[int, Headers]:
        """The response head; raises StreamError if the stream ended without one."""
        while True:
            kind, value = await self._next()
            if kind == "head":
                assert self._events is not None
                self._events.popleft()
                return self.status, self.headers
            if kind == "end":
                if isinstance(value, StreamError):
                    raise value
                raise StreamError(EndKind.PROTOCOL, "stream ended without a response")
            raise RuntimeError("response() after the body began")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks (after `response()`); raises StreamError if it is cut."""
        while True:
            kind, value = await self._next()
            assert self._events is not None
            if kind == "end":
                if isinstance(value, StreamError):
                    raise value
                return
            self._events.popleft()
            if kind == "data":
                assert isinstance(value, bytes)
                self.ack(len(value))
                yield value

    async def body(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def closed(self) -> StreamError | None:
        """Wait for the end (body left unread is acked); the error, None when complete."""
        while not self.ended:
            kind, value = await self._next()
            if kind == "end":
                break
            assert self._events is not None
            self._events.popleft()
            if kind == "data" and isinstance(value, bytes):
                self.ack(len(value))
        return self.error
