"""Busy polling (`performance.busy_poll`, off by default): after a read, while at most one
request is in flight, the worker keeps polling its sockets for a short window instead of
letting its CPU sleep.

Why: on a virtual machine a sleeping vCPU is woken through the host (an inter-processor
interrupt), which costs tens of microseconds before the first instruction runs, and a request
through a proxy wakes it twice (the client's request, the upstream's answer). At low
concurrency those wake-ups, not the proxy's work, set the latency. HAProxy's `busy-polling`
trades CPU for them the same way; this one is bounded: it polls for `window` after the last
read and stops, so an idle worker sleeps as before. Under load the loop never sleeps anyway,
and polling there only takes CPU from the peers: while two or more requests are in flight (the
write batch gathers then, `batch`) it does not poll. Each polling turn yields the CPU
(`sched_yield`), so that a peer waiting for the same CPU (the client, the upstream, the
service beside a sidecar) runs first: with every process on one CPU that cut what polling
cost a one-connection request from 14% to 4% (README, "Busy polling").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from splitproxy.dataplane.http.batch import WriteBatch
    from splitproxy.dataplane.http.state import EventLoop


class BusyPoll:
    """Keeps the loop polling (a callback that schedules itself: the loop then polls with a
    zero timeout, then runs it again) until `window` seconds after the last `kick`."""

    __slots__ = ("_loop", "_writes", "_clock", "window", "_until", "_polling", "turns")

    def __init__(self, loop: EventLoop, writes: WriteBatch, window: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._loop = loop
        self._writes = writes
        # Not the loop's clock: uvloop's moves in whole milliseconds, the window is microseconds.
        self._clock = clock
        self.window = window
        self._until = 0.0
        self._polling = False
        self.turns = 0  # loop turns spent polling, for the tests and the curious

    def kick(self) -> None:
        """A socket was read: poll until `window` from now."""
        self._until = self._clock() + self.window
        if not self._polling and not self._writes.gathering:
            self._polling = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        self.turns += 1
        if self._clock() < self._until and not self._writes.gathering:
            os.sched_yield()
            self._loop.call_soon(self._turn)
        else:
            self._polling = False
