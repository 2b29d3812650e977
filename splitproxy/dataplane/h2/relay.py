"""What an HTTP/1.1 client's bridged request (`bridge`) and an HTTP/2 client's forwarded one
(`forward`) do alike on an HTTP/2 upstream: open the stream for the version, answer a failed
open, keep a small body for a retry, credit body bytes once across attempts, and end a stream
that failed (counted, retried, or answered). Each caller keeps what differs: where the body
and the answer go, and what an endpoint that refused HTTP/2 means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from splitproxy.dataplane.h2.outcome import (
    LocalFailure,
    NoEndpoint,
    count_stream_end,
    may_retry,
    open_for_version,
)
from splitproxy.dataplane.h2.upstream import H2Pool, H2Pools, NotH2
from splitproxy.dataplane.h2.upstream_stream import (
    EndKind,
    Headers,
    StreamError,
    StreamHandler,
    UpstreamStream,
)
from splitproxy.dataplane.http.lifecycle import DONE, RESPONDING
from splitproxy.dataplane.http.pool import Overloaded

if TYPE_CHECKING:
    from splitproxy.dataplane.http.exchange import Exchange


async def open_upstream(ex: Exchange, pools: H2Pools, fields: Headers, end: bool,
                        handler: StreamHandler, not_h2: Callable[[], None],
                        deadline: float = 0.0) -> tuple[UpstreamStream, H2Pool] | None:
    """The upstream stream of `ex`'s version, or None when the exchange was answered (or the
    client went away) meanwhile; `not_h2` is called when the endpoint chose HTTP/1.1."""
    version = ex.version
    assert version is not None
    try:
        up, h2pool = await open_for_version(version, pools, ex.stats, fields, end, handler,
                                            deadline)
    except NoEndpoint as exc:  # counted already
        ex.fail(exc.status, exc.kind, exc.detail, count_error=False)
        return None
    except LocalFailure as exc:
        if ex.phase is not DONE:
            ex._fail_locally("resource", str(exc))
        return None
    except Overloaded as exc:
        if ex.phase is not DONE:
            ex._fail_locally("overload", str(exc))
        return None
    except NotH2:
        not_h2()
        return None
    except StreamError as exc:
        ex.fail(502, "protocol", exc.detail)
        return None
    if ex.phase is DONE:  # the client went away meanwhile
        up.reset()
        return None
    return up, h2pool


class Replay:
    """The body kept for a retry and the credit given for it, of one request."""

    __slots__ = ("kept", "kept_size", "retries", "credited", "attempt_sent")

    def __init__(self) -> None:
        # The body, kept whole while small (limits.body_buffer) so a refused stream can be
        # sent again; None once it is larger.
        self.kept: list[bytes] | None = []
        self.kept_size = 0
        self.retries = 0
        # Body bytes the upstream took (the most of any attempt, and the current attempt's):
        # a retry replays bytes the client was already credited (or released) for.
        self.credited = 0
        self.attempt_sent = 0

    def keep(self, data: bytes, limit: int) -> None:
        kept = self.kept
        if kept is not None:
            self.kept_size += len(data)
            if self.kept_size <= limit:
                kept.append(data)
            else:
                self.kept = None

    def fresh(self, n: int) -> int:
        """Of `n` body bytes the upstream took, those not credited yet (0 for a replay)."""
        self.attempt_sent += n
        fresh = self.attempt_sent - self.credited
        if fresh <= 0:
            return 0
        self.credited = self.attempt_sent
        return fresh

    def replay(self) -> list[bytes]:
        """A retry begins: the kept body, to send again."""
        self.retries += 1
        self.attempt_sent = 0
        return list(self.kept or [])

    def stream_failed(self, ex: Exchange, h2pool: H2Pool | None, error: StreamError,
                      request_done: bool) -> bool:
        """The upstream stream ended with `error`: counted, then the exchange answered (or
        the client cut); True when the request is to be sent again instead."""
        version = ex.version
        assert version is not None and h2pool is not None
        count_stream_end(version, ex.stats, h2pool, error)
        if error.kind == EndKind.CANCELLED:
            return False
        if ex.phase < RESPONDING and may_retry(error, self.retries,
                                               self.kept is not None and request_done):
            return True
        if ex.phase < RESPONDING:
            status = 504 if error.kind == EndKind.TIMEOUT else 502
            ex.fail(status, str(error.kind), error.detail, count_error=False)
        else:
            ex._abort_client()
        return False
