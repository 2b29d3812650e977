"""Time, injected: the rollout owner's timers, measurement schedule and store backoff all read
and sleep on a `Clock`, so tests move time instead of waiting for it. Network timeouts stay
on the event loop's real time."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall clock, seconds since the epoch (persisted times, deployment windows)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals, windows of counters)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM = SystemClock()
