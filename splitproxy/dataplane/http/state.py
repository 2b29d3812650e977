"""What a connection may know of its server (as uvicorn's `ServerState`), instead of the
whole server: the protocols get this, the server owns and updates it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from splitproxy.config.models import Limits, Timeouts
from splitproxy.dataplane.http.accesslines import AccessLines
from splitproxy.dataplane.http.batch import WriteBatch
from splitproxy.dataplane.http.busypoll import BusyPoll
from splitproxy.dataplane.http.runtime import Runtime
from splitproxy.dataplane.stats import Stats

if TYPE_CHECKING:
    from splitproxy.dataplane.http.connection import ClientConnection
    from splitproxy.dataplane.http.downstream import DownstreamProtocol
    from splitproxy.dataplane.http.exchange import Exchange
    from splitproxy.dataplane.http.lifecycle import RequestContext
    from splitproxy.dataplane.http.peer import Downstream
    from splitproxy.dataplane.http.runtime import VersionRuntime

T = TypeVar("T")


class Timer(Protocol):
    def cancel(self) -> None: ...


class EventLoop(Protocol):
    """What the protocols ask of the event loop: its clock (deadlines and timers; durations
    use `ServerState.clock`), a task for a new upstream connection, a timer (the access log's
    flush) and a callback soon (an idle connection's parser dropped under many connections).
    Tests hand in a fake one and move its clock by hand."""

    def time(self) -> float: ...
    def create_task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]: ...
    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer: ...
    def call_soon(self, callback: Callable[[], object]) -> Timer: ...


class ServerState:
    """One per server, shared by its connections. The server assigns the fields (a reload, a
    table swap, the start of a shutdown) and never replaces the object, so a connection reads
    the current values through the one reference it was given."""

    __slots__ = ("loop", "clock", "runtime", "timeouts", "limits", "stats", "protocol",
                 "access_lines", "connections", "draining", "http2", "bridge", "header_timeout",
                 "idle_timeout", "response_timeout", "max_header", "writes", "now", "busy_poll")

    def __init__(self, loop: EventLoop, runtime: Runtime, timeouts: Timeouts, limits: Limits,
                 stats: Stats, protocol: type[DownstreamProtocol],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.loop = loop
        # The loop's clock, bound once: compiled code calls a bound method directly, while
        # `loop.time()` looks the method up by name on every call (four a request: together
        # 296 instructions of the cost gate's small GET).
        self.now: Callable[[], float] = loop.time
        # What durations are measured with (latency histograms, the guard's upstream time, the
        # access log): uvloop's `loop.time()` only moves in whole milliseconds, too coarse for
        # a request that takes 300 us. Deadlines and timers stay on the loop's clock. Tests
        # with a fake loop hand in its clock, so they move both by hand.
        self.clock = clock
        self.runtime = runtime  # the compiled routing table requests are routed by
        self.timeouts = timeouts
        self.limits = limits
        self.header_timeout = self.idle_timeout = self.response_timeout = 0.0
        self.max_header = 0
        self.configure(timeouts, limits)
        self.stats = stats
        # The class of a new client connection: the plain one, or the one that writes the
        # access log (`accesslog.protocol_for`). Chosen per connection when it is accepted,
        # so the choice costs nothing per request; a reload applies to new connections.
        self.protocol = protocol
        self.access_lines = AccessLines(loop)  # what LoggedDownstream connections log
        self.connections: set[ClientConnection] = set()  # open client connections
        self.draining = False  # shutting down: every answer closes its connection
        # Takes over a connection that speaks HTTP/2 (`dataplane.h2.server.adopt`, set by the
        # server: the HTTP/1.1 package never imports the HTTP/2 one). None: HTTP/1.1 only.
        self.http2: Callable[[DownstreamProtocol, asyncio.BaseTransport, bytes], None] | None \
            = None
        # The exchange of an HTTP/1.1 request to a version that speaks HTTP/2
        # (`dataplane.h2.bridge.bridged`, set by the server). None: such a version answers 502.
        self.bridge: Callable[[Downstream, VersionRuntime, RequestContext],
                              Exchange] | None = None
        # Where HTTP/1.1 connections write (`batch`): a loop turn's small writes, sent at its
        # end while more than one connection is busy. Tests that drive protocols by hand on a
        # fake loop, and read what was written right away, set its `gather_from` out of reach.
        self.writes = WriteBatch(loop)
        # Reads kick it (`busypoll`); None while `performance.busy_poll` is 0, so that off
        # costs a read one test.
        self.busy_poll: BusyPoll | None = None

    def configure(self, timeouts: Timeouts, limits: Limits) -> None:
        """New timeouts and limits (a reload). The ones read on every request are also kept
        as plain floats and ints: a pydantic model's attribute takes 50 ns, a slot 13 ns."""
        self.timeouts = timeouts
        self.limits = limits
        self.header_timeout = timeouts.client_header
        self.idle_timeout = timeouts.idle
        self.response_timeout = timeouts.response_header
        self.max_header = limits.max_header

    def busy_polling(self, window: float) -> None:
        """`performance.busy_poll` (start and reload): 0 turns it off. A loop already polling
        stops at the end of the window it was given."""
        if window <= 0:
            self.busy_poll = None
        elif self.busy_poll is None:
            self.busy_poll = BusyPoll(self.loop, self.writes, window)
        else:
            self.busy_poll.window = window

    def accept(self) -> DownstreamProtocol:
        """The protocol factory of the listening socket: one new client connection."""
        return self.protocol(self)
