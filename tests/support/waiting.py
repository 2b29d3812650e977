"""Bounded waits: every wait in the tests has a deadline, so a hung peer fails a test instead of
hanging the suite."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

WAIT = 5.0  # default bound for a single network step or condition in these tests


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = WAIT,
    what: str | Callable[[], str] = "condition",
    interval: float = 0.01,
) -> float:
    """Polls `predicate` (sync or async) every `interval` until it is true; returns the seconds
    it took. Fails the test after `timeout`, saying `what` it waited for (a callable: asked
    then, to show the state it ended in)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() - start > timeout:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {said}")
        await asyncio.sleep(interval)
