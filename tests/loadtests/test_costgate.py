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
# `make test`'s compiled run (tests/packaging/test_compiled.py) sets this.
COMPILED = os.environ.get("SPLITPROXY_EXPECT_COMPILED") == "1"


def _require_valgrind() -> None:
    if not costgate.available():
        if REQUIRED:
            pytest.fail("SPLITPROXY_REQUIRE_SERVICES=1 but valgrind is missing", pytrace=False)
        pytest.skip("needs valgrind (apt-get install valgrind)")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(COMPILED, reason="the interpreted data plane's budget")
def test_instructions_per_request_stay_within_the_budget() -> None:
    _require_valgrind()
    measured = costgate.measure()
    budget = json.loads(costgate.BUDGET.read_text())
    assert set(measured) == set(budget)
    assert costgate.compare(measured, budget) == []


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not COMPILED, reason="runs in make test's compiled run (make compiled)")
def test_the_compiled_build_stays_within_its_own_budget() -> None:
    """`python -m loadtests.costgate --compiled`: the proxy refuses to start interpreted."""
    _require_valgrind()
    measured = costgate.measure(compiled=True)
    budget = json.loads(costgate.BUDGET_COMPILED.read_text())
    assert set(measured) == set(budget)
    assert costgate.compare(measured, budget) == []


def test_the_comparison_allows_the_tolerance_and_no_more() -> None:
    budget = {"get-small": 100_000.0}
    assert costgate.compare({"get-small": 100_000 * (1 + costgate.TOLERANCE)}, budget) == []
    over = costgate.compare({"get-small": 100_000 * (1 + costgate.TOLERANCE) + 1}, budget)
    assert len(over) == 1 and "get-small" in over[0]
    assert "no budget" in costgate.compare({"new": 1.0}, budget)[0]
