"""Synthetic load (X-Splitproxy-Synthetic: 1) is counted apart and left out of verdicts, unless
the route says `include_synthetic: true`. Real proxy, real upstreams, real analysis loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.configs import rollout_config
from tests.support.load import Load, plain
from tests.support.service import admin, metric, run_service, scrape, write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

# Pinned, so the real and the synthetic clients both reach the canary whatever their rhythm.
PIN = {"X-Splitproxy-Version": "canary"}
SYNTHETIC = {**PIN, "X-Splitproxy-Synthetic": "1"}
ANALYSIS = {"interval": "0.3s", "max_error_rate": 0.01}


def synthetic(i: int) -> tuple[str, dict[str, str]]:
    return "synthetic", SYNTHETIC


def pinned(i: int) -> tuple[str, dict[str, str]]:
    return "canary", PIN


@pytest.mark.parametrize("include", [False, True])
async def test_a_canary_failing_only_for_synthetic_requests(
    tmp_path: Path, include: bool
) -> None:
    async with run_upstreams("stable", "canary") as b:
        b["canary"].fail_synthetic = True
        path = tmp_path / "shop.yaml"
        write_config(path, rollout_config(
            b, weights={"stable": 50, "canary": 50},
            analysis={**ANALYSIS, "include_synthetic": include}))
        async with run_service(path, watch=False) as svc:
            engine = svc.controller.engine

            def judged_passes() -> int:
                return sum(1 for c in engine.states["shop"].checks
                           if c["result"] == "pass" and c["requests"].get("canary", 0) > 0)

            async with Load(svc.proxy_port,
                            {"real": plain, "pinned": pinned, "synthetic": synthetic}).running():
                if include:
                    await wait_until(lambda: engine.states["shop"].phase == "aborted",
                                     what="the abort", timeout=20)
                else:
                    # Three passing checks while the canary answers synthetic load with 500s
                    # (a pass needs about 400 clean requests).
                    await wait_until(lambda: judged_passes() >= 3 and b["canary"].errors >= 20,
                                     what="three passing checks", timeout=20)
            state = engine.states["shop"]
            async with admin(svc) as session:
                samples = await scrape(session)

        synthetic_500 = metric(samples, "splitproxy_synthetic_requests_total",
                               route="shop", version="canary", code="500")
        assert synthetic_500 is not None and synthetic_500 >= 20
        # Real traffic never failed: the data plane put the 500s in the synthetic counters.
        assert metric(samples, "splitproxy_requests_total",
                      route="shop", version="canary", code="500") is None
        if include:
            assert (state.abort_reason or "").startswith("guard: canary error rate")
        else:
            assert state.phase == "idle"
            assert "fail" not in {c["result"] for c in state.checks}
