"""The hot path's cost gate: instructions per proxied request under callgrind, compared with the
budget checked in beside the harness (loadtests/costgate_budget.json). Instructions, unlike
seconds, do not depend on what else the machine is doing, so this fails on a real regression
only. After a deliberate change of cost, record the new budget with
`python -m loadtests.costgate --write-budget` and say why in the commit."""

from __future__ import annotations

import json
import os

import pytest

from loadtests import costgate

REQUIRED = os.environ.get("SPLITPROXY_REQUIRE_SERVICES") == "1"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_instructions_per_request_stay_within_the_budget() -> None:
    if not costgate.available():
        if REQUIRED:
            pytest.fail("SPLITPROXY_REQUIRE_SERVICES=1 but valgrind is missing", pytrace=False)
        pytest.skip("needs valgrind (apt-get install valgrind)")
    measured = costgate.measure()
    budget = json.loads(costgate.BUDGET.read_text())
    assert set(measured) == set(budget)
    assert costgate.compare(measured, budget) == []


def test_the_comparison_allows_the_tolerance_and_no_more() -> None:
    budget = {"get-small": 100_000.0}
    assert costgate.compare({"get-small": 100_000 * (1 + costgate.TOLERANCE)}, budget) == []
    over = costgate.compare({"get-small": 100_000 * (1 + costgate.TOLERANCE) + 1}, budget)
    assert len(over) == 1 and "get-small" in over[0]
    assert "no budget" in costgate.compare({"new": 1.0}, budget)[0]
