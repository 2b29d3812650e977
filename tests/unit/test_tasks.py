"""Ending background tasks: a cancellation aimed at the caller is never swallowed (it was, and
a replica's shutdown hung while its state reader kept looping)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from splitproxy.control.tasks import cancel_and_wait, first


async def _forever() -> None:
    await asyncio.Event().wait()


async def test_the_old_pattern_swallows_the_callers_cancellation() -> None:
    # The defect, shown: the caller is cancelled while it waits for a task it cancelled.
    inner = asyncio.ensure_future(_forever())

    async def caller() -> str:
        inner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await inner
        return "carried on"

    outer = asyncio.ensure_future(caller())
    await asyncio.sleep(0)  # the caller now waits for `inner` to end
    outer.cancel()
    assert await outer == "carried on"


async def test_a_caller_cancelled_while_it_waits_stays_cancelled() -> None:
    inner = asyncio.ensure_future(_forever())

    async def caller() -> str:
        await cancel_and_wait([inner])
        return "carried on"

    outer = asyncio.ensure_future(caller())
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert inner.cancelled()


async def test_first_returns_when_one_is_done_and_cancels_the_rest() -> None:
    loser = asyncio.ensure_future(_forever())
    await first(asyncio.sleep(0), loser)
    assert loser.cancelled()


async def test_a_loop_around_first_ends_when_cancelled_at_any_moment() -> None:
    # The state reader's shape: a loop around `first`, cancelled at each possible step.
    for steps in range(8):
        wake = asyncio.Event()

        async def reader(wake: asyncio.Event = wake) -> None:
            while True:
                await first(asyncio.sleep(0), wake.wait())

        task = asyncio.ensure_future(reader())
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert done and task.cancelled(), f"still running after cancel at step {steps}"


async def test_an_error_a_task_ended_with_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    await cancel_and_wait([task])
    assert "boom" in caplog.text


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again() -> None:
    # As a library that turns a cancellation into its own error and carries on.
    rounds = 0

    async def stubborn() -> None:
        nonlocal rounds
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                rounds += 1
                if rounds > 1:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task]), 5)
    assert task.cancelled() and rounds == 2
