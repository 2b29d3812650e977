"""Durations are read from a clock finer than the event loop's: uvloop's `loop.time()` moves
in whole milliseconds, so a 300 us request would be counted as 0 or 1 ms."""

from __future__ import annotations

import asyncio

import uvloop

from tests.support.proxy import proxied
from tests.support.rawhttp import raw_client

REQUESTS = 20


def _off_the_millisecond(seconds: float) -> float:
    """How far `seconds` is from a whole number of milliseconds, in milliseconds."""
    ms = seconds * 1000
    return abs(ms - round(ms))


async def _measured() -> tuple[float, float]:
    """(the loop's clock once, the sum of REQUESTS latencies the proxy observed)."""
    loop_time = asyncio.get_running_loop().time()
    async with proxied() as (_, srv):
        async with raw_client(srv.port) as c:
            for i in range(REQUESTS):
                assert (await c.request("GET", f"/n/{i}")).status == 200
        stats = srv.stats.get("shop", "stable")
        assert sum(stats.latency_counts) == REQUESTS
        return loop_time, stats.latency_sum


def test_latencies_under_uvloop_are_not_whole_milliseconds() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        loop_time, total = runner.run(_measured())
    # The premise: uvloop's clock is in whole milliseconds (libuv's uv_now).
    assert _off_the_millisecond(loop_time) < 1e-6
    # Twenty durations from that clock would sum to whole milliseconds too; from a
    # nanosecond clock the chance of landing within 1 ns of one is about 2e-6.
    assert 0 < total
    assert _off_the_millisecond(total) > 1e-6, total
