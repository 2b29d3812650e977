"""What an operator's log shows when the guard acts: an automatic abort, and a breach it does
not yet act on, each as one WARNING line with route, reason and the numbers, also as
structured fields for JSON logs. (Promoted is final: tests/rollout/test_engine.py.)"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from splitproxy.config.logformat import JsonFormatter
from splitproxy.config.models import Config
from tests.support.configs import rollout_config
from tests.support.engine import Harness

URLS = {"stable": "http://127.0.0.1:9001", "canary": "http://127.0.0.1:9002"}
FAST = {"interval": "1s", "max_error_rate": 0.01}


def config(**kw: Any) -> Config:
    kw.setdefault("weights", {"stable": 50, "canary": 50})
    return Config.model_validate(rollout_config(URLS, analysis=FAST, **kw))


def failing(h: Harness, n: int = 30) -> None:
    h.traffic.serve("stable", n)
    h.traffic.serve("canary", n, errors=n)


def warnings(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "splitproxy.rollout"
            and r.levelno == logging.WARNING and getattr(r, "event", None) == event]


async def test_an_automatic_abort_is_logged_at_warning_with_route_reason_and_numbers(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "splitproxy")
    h = harness
    await h.start(config())
    for _ in range(15):
        failing(h)
        await h.tick(1.0)
        if h.state().phase == "aborted":
            break
    assert h.state().phase == "aborted"
    (record,) = warnings(caplog, "guard_abort")
    message = record.getMessage()
    assert message.startswith("rollout route=shop automatic abort"), message
    assert "weights={'stable': 100, 'canary': 0}" in message
    assert "reason=guard: canary error rate" in message and "(last check: requests={" in message
    fields: Any = record.__dict__
    assert fields["route"] == "shop" and fields["phase"] == "aborted"
    assert fields["reason"].startswith("guard: canary error rate")
    assert fields["check_requests"]["canary"] > 0
    assert fields["weights"] == {"stable": 100, "canary": 0}
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING" and line["route"] == "shop"
    assert line["check_requests"] == fields["check_requests"]


async def test_a_breach_is_logged_at_warning_once_before_the_evidence_aborts(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "splitproxy")
    h = harness
    await h.start(config())
    for _ in range(15):
        failing(h)
        await h.tick(1.0)
        if h.state().phase == "aborted":
            break
    checks = [c["result"] for c in h.state().checks]
    assert checks.count("inconclusive") >= 2, checks  # over the limit at several checks
    (breach,) = warnings(caplog, "guard_breach")  # ...and said once
    message = breach.getMessage()
    assert message.startswith("rollout route=shop breach: canary error"), message
    assert "not yet conclusive" in message and "(n=" in message
    fields: Any = breach.__dict__
    assert fields["version"] == "canary" and fields["estimate"] > fields["limit"] == 0.01
    (abort,) = warnings(caplog, "guard_abort")
    assert caplog.records.index(breach) < caplog.records.index(abort)


async def test_a_healthy_canary_logs_no_breach(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "splitproxy")
    h = harness
    await h.start(config())
    for _ in range(60):
        h.traffic.serve("stable", 100)
        h.traffic.serve("canary", 100)
        await h.tick(1.0)
        if [c["result"] for c in h.state().checks].count("pass"):
            break
    assert [c["result"] for c in h.state().checks].count("pass")  # judged, and fine
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
