"""This process's memory, for the tests that bound what a peer can make the proxy hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@contextlib.asynccontextmanager
async def peak_rss() -> AsyncIterator[list[int]]:
    """Samples RSS every 10 ms while the block runs; yields [baseline, peak], peak set on exit."""
    result = [rss_bytes(), 0]
    peak = result[0]
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_bytes())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)

    task = asyncio.create_task(sample())
    try:
        yield result
    finally:
        stop.set()
        await task
        result[1] = max(peak, rss_bytes())
