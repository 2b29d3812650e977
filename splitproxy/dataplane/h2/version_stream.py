"""One request to a version over HTTP/2, with the HTTP/1.1 path's rules applied for the caller:
the endpoint chosen by the version's round robin, connect failures moving on to the next
endpoint, a refused stream (or one above a GOAWAY's last stream id) sent again once while the
request is whole in hand, and every failure counted against the version and the endpoint
(`outcome`). The downstream side talks to this object as it would to an `UpstreamStream`::

    vs = VersionStream(version, h2pools, stats, headers, handler, deadline=deadline)
    await vs.open(end_stream)        # NoEndpoint / LocalFailure / Overloaded / NotH2
    vs.send_data(chunk, end_stream)  # the client's body; credit back from handler.on_sent
    vs.ack(n)                        # from handler.on_data, once the bytes are passed on
    vs.reset()                       # the client went away

and `handler` gets the stream's events (`upstream_stream.StreamHandler`), once: a retry is
invisible to it (replayed body is not reported by `on_sent` a second time).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from splitproxy.dataplane.h2 import outcome
from splitproxy.dataplane.h2.upstream import H2Pool, H2Pools, NotH2
from splitproxy.dataplane.h2.upstream_stream import (
    Headers,
    StreamError,
    StreamHandler,
    UpstreamStream,
)
from splitproxy.dataplane.http.pool import Overloaded

if TYPE_CHECKING:
    from splitproxy.dataplane.http.runtime import VersionRuntime
    from splitproxy.dataplane.stats import VersionStats

# Request body kept for a retry until the response head arrives; a larger body is streamed
# without a copy and is not retried (as `limits.body_buffer` for HTTP/1.1).
KEEP = 64 * 1024


class VersionStream:
    """See the module docstring."""

    __slots__ = ("version", "pools", "stats", "headers", "handler", "deadline", "keep",
                 "stream", "h2pool", "kept", "kept_size", "trailers", "ended", "retries",
                 "reported", "sent_here", "answered", "cancelled", "_retrying")

    def __init__(self, version: VersionRuntime, pools: H2Pools, stats: VersionStats | None,
                 headers: Headers, handler: StreamHandler, deadline: float = 0.0,
                 keep: int = KEEP) -> None:
        self.version = version
        self.pools = pools
        self.stats = stats
        self.headers = headers
        self.handler = handler
        self.deadline = deadline
        self.keep = keep
        self.stream: UpstreamStream | None = None
        self.h2pool: H2Pool | None = None
        self.kept: list[bytes] | None = []  # None: too large to keep, not retryable
        self.kept_size = 0
        self.trailers: Headers | None = None
        self.ended = False  # the request's end was given
        self.retries = 0
        self.reported = 0  # body bytes reported to the handler by on_sent
        self.sent_here = 0  # body bytes the current stream sent
        self.answered = False
        self.cancelled = False
        self._retrying: asyncio.Task[None] | None = None

    async def open(self, end_stream: bool = False) -> None:
        """Open the stream on an endpoint of the version (see `outcome.open_for_version`)."""
        self.ended = end_stream
        self.stream, self.h2pool = await outcome.open_for_version(
            self.version, self.pools, self.stats, self.headers, end_stream, self,
            self.deadline)

    # -- the caller's side -------------------------------------------------------------------
    def send_data(self, data: bytes, end_stream: bool = False) -> None:
        if self.ended:
            return
        self.ended = end_stream
        if self._retrying is not None:
            # Held for the new stream (bounded: the client gets no credit for it meanwhile).
            assert self.kept is not None
            self.kept.append(data)
            self.kept_size += len(data)
            return
        if self.kept is not None and not self.answered:
            if self.kept_size + len(data) <= self.keep:
                self.kept.append(data)
                self.kept_size += len(data)
            else:
                self.kept = None
        if self.stream is not None:
            self.stream.send_data(data, end_stream)

    def send_trailers(self, trailers: Headers) -> None:
        if self.ended:
            return
        self.ended = True
        self.trailers = trailers
        if self.stream is not None and self._retrying is None:
            self.stream.send_trailers(trailers)

    def ack(self, n: int) -> None:
        if self.stream is not None:
            self.stream.ack(n)

    def reset(self, code: int = 0x8) -> None:
        """Abandon the request; no callback follows."""
        self.cancelled = True
        if self.stream is not None:
            self.stream.reset(code)
        if self._retrying is not None:
            self._retrying.cancel()

    # -- StreamHandler of the current stream ---------------------------------------------------
    def on_response(self, status: int, headers: Headers, end_stream: bool) -> None:
        self.answered = True
        self.kept = None  # answered: a retry is out of the question
        if self.h2pool is not None:
            outcome.answered(self.h2pool)
        self.handler.on_response(status, headers, end_stream)

    def on_data(self, data: bytes, end_stream: bool) -> None:
        self.handler.on_data(data, end_stream)

    def on_trailers(self, trailers: Headers) -> None:
        self.handler.on_trailers(trailers)

    def on_sent(self, n: int) -> None:
        self.sent_here += n
        fresh = self.sent_here - self.reported
        if fresh > 0:  # a replay reports nothing already reported
            self.reported += fresh
            self.handler.on_sent(fresh)

    def on_end(self, error: StreamError | None) -> None:
        if error is None or self.cancelled:
            if not self.cancelled:
                self.handler.on_end(error)
            return
        assert self.h2pool is not None
        outcome.count_stream_end(self.version, self.stats, self.h2pool, error)
        if not self.answered and outcome.may_retry(error, self.retries, self.kept is not None):
            self.retries += 1
            self._retrying = asyncio.get_running_loop().create_task(self._retry(error))
            return
        self.handler.on_end(error)

    async def _retry(self, error: StreamError) -> None:
        """Send the whole request again, on a new stream (another connection, or another
        endpoint when connects fail); the handler sees the original error if that fails."""
        headers_only = self.ended and not self.kept_size and self.trailers is None
        try:
            stream, h2pool = await outcome.open_for_version(
                self.version, self.pools, self.stats, self.headers, headers_only, self,
                self.deadline)
        except asyncio.CancelledError:
            return
        except (outcome.NoEndpoint, outcome.LocalFailure, Overloaded, NotH2, StreamError,
                OSError, TimeoutError):
            self._retrying = None
            if not self.cancelled:
                self.handler.on_end(error)
            return
        self._retrying = None
        if self.cancelled:
            stream.reset()
            return
        self.stream, self.h2pool = stream, h2pool
        self.sent_here = 0
        if headers_only:
            return
        assert self.kept is not None
        body = b"".join(self.kept)  # read now: more may have come while connecting
        if body or (self.ended and self.trailers is None):
            stream.send_data(body, self.ended and self.trailers is None)
        if self.trailers is not None:
            stream.send_trailers(self.trailers)
