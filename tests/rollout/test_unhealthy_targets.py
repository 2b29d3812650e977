"""The engine and endpoint health: a weight step waits while the canary has no healthy
endpoint; an abort onto a baseline without one is logged at ERROR and counted."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from splitproxy.config.models import Config
from splitproxy.rollout import PauseReason, Phase
from tests.support.configs import rollout_config
from tests.support.engine import Harness

URLS = {"stable": "http://127.0.0.1:9001", "canary": "http://127.0.0.1:9002"}


def config(**kw: Any) -> Config:
    return Config.model_validate(rollout_config(
        URLS, weights={"stable": 100, "canary": 0},
        rollout={"steps": [{"set_weight": 20}, {"pause": {}}]}, **kw))


async def test_weight_step_waits_for_a_healthy_canary_endpoint(harness: Harness) -> None:
    h = harness
    down = {("shop", "canary")}
    h.engine.all_down = lambda: frozenset(down)
    await h.start(config())
    await h.tick(1.0)
    state = h.state()
    assert (state.phase, state.pause_reason) == (Phase.PAUSED, PauseReason.NO_HEALTHY)
    assert h.weights() == {"stable": 100, "canary": 0}
    down.clear()  # an endpoint passes its checks again
    await h.tick(1.0)
    assert h.weights() == {"stable": 80, "canary": 20}
    assert h.state().pause_reason == PauseReason.AWAIT_PROMOTE


async def test_abort_onto_a_baseline_without_healthy_endpoint_is_loud(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    down: set[tuple[str, str]] = set()
    h.engine.all_down = lambda: frozenset(down)
    await h.start(config())
    await h.tick(1.0)
    assert h.weights() == {"stable": 80, "canary": 20}
    down.add(("shop", "stable"))
    with caplog.at_level(logging.ERROR, logger="splitproxy.rollout"):
        state = await h.act("abort", reason="bad build")
    assert state.phase == Phase.ABORTED
    assert h.weights() == {"stable": 100, "canary": 0}  # the abort stands
    assert h.engine.aborts_onto_down == {"shop": 1}
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "aborted onto baseline stable, which has no healthy endpoint" in record.getMessage()


async def test_abort_onto_a_healthy_baseline_is_not_flagged(harness: Harness) -> None:
    h = harness
    h.engine.all_down = lambda: frozenset({("shop", "canary")})
    await h.start(config())
    await h.act("abort", reason="bad build")
    assert h.engine.aborts_onto_down == {}
