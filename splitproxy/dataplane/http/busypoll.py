"""Busy polling (`performance.busy_poll`; `auto`, the default, chooses the window in
`dataplane.cpuidle`): after a read, while at most one request is in flight, the worker keeps
polling its sockets for a short window instead of letting its CPU sleep.

Why: on a virtual machine a sleeping vCPU is woken through the host (an inter-processor
interrupt), which costs tens of microseconds before the first instruction runs, and a request
through a proxy wakes it twice (the client's request, the upstream's answer). At low
concurrency those wake-ups, not the proxy's work, set the latency. HAProxy's `busy-polling`
trades CPU for them the same way; this one is bounded: it polls for `window` after the last
read and stops, so an idle worker sleeps as before. Under load the loop never sleeps anyway,
and polling there only takes CPU from the peers: while two or more requests are in flight
(HTTP/1.1 exchanges and HTTP/2 streams, as `batch` counts them) it does not poll. Each
polling turn yields the CPU (`sched_yield`), so that a peer waiting for the same CPU (the
client, the upstream, the service beside a sidecar) runs first: with every process on one
CPU that cut what polling cost a one-connection request from 14% to 4% (README, "Busy
polling").

It learns where polling pays, per side, as the guest kernel's haltpoll governor learns per
CPU: a read from a client is followed by the upstream's answer (soon, from a fast service),
a read from an upstream by the client's next request (soon only from a client that does not
think). After MISSES polls in a row that ran out on one side, that side's reads stop starting
polls, but for every PROBE-th, which tries again; one read of the other side caught while
polling turns the side back on. A slow service so costs a probe's window in PROBE requests;
a thinking client that too, and the rest of the client side's window after each answer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from splitproxy.dataplane.http.batch import WriteBatch
    from splitproxy.dataplane.http.state import EventLoop


# The two sides a read comes from (`kick`).
CLIENT: Final = 0
UPSTREAM: Final = 1
MISSES: Final = 8
PROBE: Final = 16


class BusyPoll:
    """Keeps the loop polling (a callback that schedules itself: the loop then polls with a
    zero timeout, then runs it again) until `window` seconds after the last `kick`, on the
    sides where polling has been catching reads."""

    __slots__ = ("_loop", "_writes", "_clock", "window", "_until", "_polling", "_side",
                 "_misses", "_skipped", "turns")

    def __init__(self, loop: EventLoop, writes: WriteBatch, window: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._loop = loop
        self._writes = writes
        # Not the loop's clock: uvloop's moves in whole milliseconds, the window is microseconds.
        self._clock = clock
        self.window = window
        self._until = 0.0
        self._polling = False
        self._side = -1  # whose read the current poll waits after (-1: none to learn from)
        self._misses = [0, 0]  # polls in a row that ran out, per side
        self._skipped = [0, 0]  # reads since that side last polled, while it is off
        self.turns = 0  # loop turns spent polling, for the tests and the curious

    def kick(self, side: int) -> None:
        """A socket of `side` (CLIENT, UPSTREAM) was read: poll until `window` from now."""
        writes = self._writes
        if not self._polling and (writes.gathering or writes.busy + writes.h2_busy >= 2):
            return  # under load (`WriteBatch.loaded`, inlined: every read asks): nothing to do
        if self._polling and 0 <= self._side != side:
            # The other side answered while polling: caught. A read of the same side (the
            # rest of a body, a PING) says nothing of the wait after it, so it is not judged.
            self._misses[self._side] = 0
        if self._misses[side] >= MISSES:
            self._skipped[side] += 1
            if self._skipped[side] < PROBE:
                # A poll under way runs out its window (the rest of this answer may come in
                # it), unjudged.
                self._side = -1
                return
            self._skipped[side] = 0
        self._side = side
        self._until = self._clock() + self.window
        if not self._polling:
            self._polling = True
            self._loop.call_soon(self._turn)

    def sides_on(self) -> tuple[bool, bool]:
        """Whether reads of each side start polls now (for the tests and the curious)."""
        return (self._misses[CLIENT] < MISSES, self._misses[UPSTREAM] < MISSES)

    def _turn(self) -> None:
        self.turns += 1
        if self._writes.loaded():
            self._polling = False  # busy: not a miss
        elif self._clock() < self._until:
            os.sched_yield()
            self._loop.call_soon(self._turn)
        else:
            self._polling = False
            if self._side >= 0:
                self._misses[self._side] += 1
