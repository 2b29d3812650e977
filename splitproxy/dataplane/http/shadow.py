"""A route's `mirror` at run time: its settings, the version copied to, which requests are
copied and the counting of the results (`mirror` sends the copies and compares)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from splitproxy.config.mirror import Mirror
from splitproxy.routing.table import RouteEntry

if TYPE_CHECKING:
    from splitproxy.dataplane.http.lifecycle import RequestContext
    from splitproxy.dataplane.http.runtime import VersionRuntime
    from splitproxy.dataplane.stats import Stats

RESULTS = ("match", "mismatch", "dropped", "error")
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# Never part of the comparison: they differ between any two answers or describe framing.
ALWAYS_IGNORED = frozenset((
    b"date", b"server", b"connection", b"keep-alive", b"transfer-encoding", b"content-length",
    b"x-request-id", b"age", b"set-cookie"))


class Shadow:
    """One route's mirror at run time: its settings, the version copied to, and the copies
    in progress. Kept per routing table; the counters live in `Stats.shadow`."""

    __slots__ = ("route", "config", "version", "stats", "in_flight", "methods", "_acc",
                 "ignored", "tasks", "idle", "closed")

    def __init__(self, route: str, config: Mirror, version: VersionRuntime, stats: Stats
                 ) -> None:
        self.route = route
        self.config = config
        self.version = version
        self.stats = stats
        self.in_flight = 0
        self.methods = frozenset(m.encode("ascii") for m in config.methods)
        self._acc = 0.0  # percent: a deterministic spread, as the weighted round robin
        self.ignored = ALWAYS_IGNORED | {h.encode("latin-1") for h in
                                         config.compare.ignore_headers}
        self.tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references
        # Kept-alive connections to the shadow's endpoints, by endpoint: the copies' own,
        # never the primary's pools (a slow shadow holds up no client request).
        self.idle: dict[str, list[Connection]] = {}
        self.closed = False

    def count(self, result: str) -> None:
        key = (self.route, self.version.name, result)
        shadow = self.stats.shadow
        shadow[key] = shadow.get(key, 0) + 1

    def take(self, endpoint: str) -> Connection | None:
        """An idle connection to `endpoint` still open, or None."""
        conns = self.idle.get(endpoint)
        while conns:
            reader, writer = conns.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    def give(self, endpoint: str, reader: asyncio.StreamReader,
             writer: asyncio.StreamWriter) -> None:
        """Keeps a connection whose answer was read whole for the next copy; at most
        `max_in_flight` per endpoint, none once this mirror is replaced or stopped."""
        conns = self.idle.setdefault(endpoint, [])
        if self.closed or len(conns) >= self.config.max_in_flight:
            writer.close()
        else:
            conns.append((reader, writer))

    def close(self) -> None:
        """Closes the idle connections; copies still in flight close theirs when done."""
        self.closed = True
        for conns in self.idle.values():
            for _, writer in conns:
                writer.close()
        self.idle.clear()

    def wanted(self, method: bytes, request: RequestContext, content_length: bytes | None
               ) -> bool:
        """Is this request copied? Its method, the percent, and its body's size."""
        if method not in self.methods or request.upgrade:
            return False
        if request.has_body and (request.chunked or content_length is None
                                 or int(content_length) > self.config.max_body):
            return False
        self._acc += self.config.percent
        if self._acc < 100.0:
            return False
        self._acc -= 100.0
        return True


def shadow_of(entry: RouteEntry, versions: dict[str, VersionRuntime], stats: Stats,
              previous: Shadow | None = None) -> Shadow | None:
    """The route's mirror for a new routing table (None: it has none). The same mirror in
    the table before goes on, its copies in flight still counted against its bound and its
    percent spread where it was: a rollout step or a reload must not let a burst through."""
    mirror = entry.mirror
    if mirror is None or mirror.to not in versions:
        return None
    if previous is not None and previous.config == mirror:
        previous.version = versions[mirror.to]
        previous.stats = stats
        return previous
    return Shadow(entry.name, mirror, versions[mirror.to], stats)
