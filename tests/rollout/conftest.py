"""Fixtures for the rollout engine tests; the helpers are in `tests/support/`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.engine import Harness


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """A RolloutEngine on a ManualClock over an in-memory store; stopped after the test."""
    h = Harness()
    try:
        yield h
    finally:
        await h.engine.stop()
