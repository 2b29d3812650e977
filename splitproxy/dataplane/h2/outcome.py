"""What an HTTP/2 upstream failure means for the version, the endpoint and the request: the
same rules as the HTTP/1.1 exchange (`http.lifecycle`, `http.exchange`), for streams.

* A failed connect (refused, unreachable, timed out, TLS refused) is counted under its kind
  and against the endpoint's passive health; the request goes to the version's next endpoint,
  once per endpoint: nothing of it left the proxy.
* A refused stream (RST_STREAM REFUSED_STREAM) counts against the endpoint too (it will not
  serve), and is retried; a stream above a GOAWAY's last stream id is retried without blame
  (the upstream is draining, as a closed keep-alive connection is for HTTP/1.1).
* A retry needs the whole request: its body must still be held (`body_sent` within what the
  caller kept), and at most `MAX_RETRIES` per request.
* A reset or lost connection after the request was processed counts as "reset" against the
  version and the endpoint; a timeout as "timeout"; a protocol error as "protocol".

`open_for_version` is the connect half, for a caller that has a version and a request head.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from splitproxy.dataplane.h2.upstream import H2Pool, H2Pools
from splitproxy.dataplane.h2.upstream_stream import (
    EndKind,
    Headers,
    StreamError,
    StreamHandler,
    UpstreamStream,
)
from splitproxy.dataplane.http import health
from splitproxy.dataplane.http.local import LOCAL_ERRNOS

if TYPE_CHECKING:
    from splitproxy.dataplane.http.runtime import VersionRuntime
    from splitproxy.dataplane.stats import VersionStats

MAX_RETRIES = 1  # as nginx's proxy_next_upstream_tries for a non-idempotent request's retry


class NoEndpoint(Exception):
    """No endpoint of the version could be reached; `kind` and `status` say how to answer
    (`grpc.failure_headers(kind, status, ...)` or an HTTP error) and it is counted already."""

    def __init__(self, kind: str, status: int, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.status = status
        self.detail = detail


class LocalFailure(Exception):
    """The proxy itself could not (out of descriptors): the proxy's own 503, not counted
    against the version (`Stats.count_local("resource")`)."""


def connect_kind(exc: BaseException) -> str:
    return "tls" if isinstance(exc, ssl.SSLError) else "connect"


def count_connect_failure(version: VersionRuntime, stats: VersionStats | None,
                          h2pool: H2Pool, exc: BaseException) -> str:
    """Count a failed connect against the version and the endpoint; returns its kind."""
    kind = connect_kind(exc)
    if stats is not None:
        stats.errors[kind] += 1
    health.record_failure(version, h2pool.health)
    return kind


def count_stream_end(version: VersionRuntime, stats: VersionStats | None, h2pool: H2Pool,
                     error: StreamError) -> None:
    """Count a stream that ended abnormally (not one the proxy cancelled)."""
    if error.kind == EndKind.CANCELLED:
        return
    if error.retryable and not error.refused:
        return  # GOAWAY: the upstream is draining, nothing went wrong
    if stats is not None:
        stats.errors[str(error.kind)] += 1
    if error.refused or error.kind == EndKind.RESET:
        health.record_failure(version, h2pool.health)


def may_retry(error: StreamError, retries: int, body_kept: bool) -> bool:
    """A stream may be sent again: the upstream never processed it, the request is whole
    in hand, and the request has retries left."""
    return error.retryable and body_kept and retries < MAX_RETRIES


def answered(h2pool: H2Pool) -> None:
    """A response head arrived: a run of the endpoint's failures ends."""
    if h2pool.health.failures:
        h2pool.health.answered()


async def open_for_version(version: VersionRuntime, pools: H2Pools, stats: VersionStats | None,
                           headers: Headers, end_stream: bool,
                           handler: StreamHandler | None = None,
                           deadline: float = 0.0) -> tuple[UpstreamStream, H2Pool]:
    """A stream on an endpoint of `version`, trying each endpoint once when connects fail
    (counted as they fail). Raises NoEndpoint (counted; answer 502/503/504), LocalFailure,
    `http.pool.Overloaded` (the proxy's own 503) or `upstream.NotH2`."""
    pool = version.next_pool()
    if pool is None:
        raise NoEndpoint("connect", 503, f"no healthy endpoint for version {version.name}")
    tries = 0
    while True:
        h2pool = pools.get(pool)
        try:
            stream = await h2pool.open_stream(headers, end_stream, handler, deadline)
            return stream, h2pool
        except (TimeoutError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS:
                raise LocalFailure(f"cannot open a connection to {pool.endpoint.key}: "
                                   f"{exc.strerror or exc}") from None
            kind = count_connect_failure(version, stats, h2pool, exc)
            tries += 1
            nxt = version.next_pool() if tries < len(version.pools) else None
            if nxt is None or nxt is pool:
                if isinstance(exc, TimeoutError):
                    raise NoEndpoint("connect", 504,
                                     f"connect to {pool.endpoint.key} timed out") from None
                raise NoEndpoint(kind, 502, f"cannot connect to {pool.endpoint.key}: "
                                 f"{exc.strerror or exc}") from None
            pool = nxt
