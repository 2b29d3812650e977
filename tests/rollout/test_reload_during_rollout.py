"""Hot reload during a rollout: an edit that does not touch the rollout's identity (version
names, steps, `rollout.revision`) keeps the current state, an abort included: thresholds,
timeouts, weights and endpoints (scaling, replacing pods). An edit to the identity starts a new
rollout at step 0 and clears the abort.

The config file is really rewritten; `controller.reload()` is called directly instead of
waiting for the watcher (the watcher itself is tested in tests/control)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.configs import rollout_config
from tests.support.load import hit
from tests.support.service import admin, run_service, write_config
from tests.support.upstream import Upstream, run_upstreams
from tests.support.waiting import wait_until

Edit = Callable[[dict[str, Any], dict[str, Upstream]], None]


def shop(cfg: dict[str, Any]) -> dict[str, Any]:
    route: dict[str, Any] = cfg["routes"][0]
    return route


def threshold(cfg: dict[str, Any], b: dict[str, Upstream]) -> None:
    shop(cfg)["analysis"]["max_error_rate"] = 0.5
    shop(cfg)["analysis"]["max_p99_ms"] = 900


def timeout(cfg: dict[str, Any], b: dict[str, Upstream]) -> None:
    cfg["timeouts"]["connect"] = "1s"
    cfg["timeouts"]["response_header"] = "5s"


def interval(cfg: dict[str, Any], b: dict[str, Upstream]) -> None:
    shop(cfg)["analysis"]["interval"] = "30s"


def steps(cfg: dict[str, Any], b: dict[str, Upstream]) -> None:
    shop(cfg)["rollout"]["steps"] = [{"set_weight": 40}, {"pause": {}}]


def revision(cfg: dict[str, Any], b: dict[str, Upstream]) -> None:
    shop(cfg)["rollout"]["revision"] = "v2"


def weights(cfg: dict[str, Any], b: dict[str, Upstream]) -> None:
    shop(cfg)["weights"] = {"stable": 90, "canary": 10}


def endpoints(cfg: dict[str, Any], b: dict[str, Upstream]) -> None:
    shop(cfg)["versions"]["canary"]["endpoints"] = [b["canary"].url, b["canary2"].url]


def stable_endpoint(cfg: dict[str, Any], b: dict[str, Upstream]) -> None:
    shop(cfg)["versions"]["stable"]["endpoints"] = [b["stable"].url, b["stable2"].url]


def version_added(cfg: dict[str, Any], b: dict[str, Upstream]) -> None:
    shop(cfg)["versions"]["canary2"] = {"endpoints": [b["canary2"].url]}


def base_config(b: dict[str, Upstream]) -> dict[str, Any]:
    return rollout_config(
        {"stable": b["stable"], "canary": b["canary"]},
        weights={"stable": 100, "canary": 0},
        # Slow analysis: only the operator's abort matters here.
        analysis={"interval": "60s"},
        rollout={"revision": "v1", "steps": [{"set_weight": 30}, {"pause": {}}]},
    )


async def aborted_service_then(
    tmp_path: Path, edit: Edit, check: Callable[[Any, dict[str, Upstream]], Any]
) -> None:
    async with run_upstreams("stable", "canary", "canary2", "stable2") as b:
        path = tmp_path / "shop.yaml"
        cfg = base_config(b)
        write_config(path, cfg)
        async with run_service(path, watch=False) as svc:
            engine = svc.controller.engine
            await wait_until(lambda: engine.weights()["shop"]["canary"] == 30, what="step 1")
            async with admin(svc) as session:
                async with session.post("/routes/shop/abort?reason=canary%20broken") as resp:
                    assert resp.status == 200, await resp.text()
            assert await hit(svc.proxy_port, 20) == {"stable": 20}

            edited = copy.deepcopy(cfg)
            edit(edited, b)
            write_config(path, edited)
            assert svc.controller.reload() is True
            assert svc.controller.generation() == 2
            await check(svc, b)


@pytest.mark.parametrize("edit", [threshold, timeout, interval, weights, endpoints,
                                  stable_endpoint])
async def test_an_abort_survives_a_reload_that_does_not_change_the_rollout_s_identity(
    tmp_path: Path, edit: Edit
) -> None:
    async def still_aborted(svc: Any, b: dict[str, Upstream]) -> None:
        state = svc.controller.engine.states["shop"]
        assert (state.phase, state.abort_reason) == ("aborted", "manual: canary broken")
        canary_before = b["canary"].requests + b["canary2"].requests
        served = await hit(svc.proxy_port, 50)
        assert served["stable"] + served["stable2"] == 50, served
        assert b["canary"].requests + b["canary2"].requests == canary_before
        saved = json.loads((tmp_path / "shop.state.json").read_text())["routes"]["shop"]
        assert saved["phase"] == "aborted"

    await aborted_service_then(tmp_path, edit, still_aborted)


@pytest.mark.parametrize(
    ("edit", "canary_weight"),
    [(steps, 40), (revision, 30), (version_added, 30)],
)
async def test_a_reload_that_changes_the_rollout_starts_over_at_step_zero_and_clears_the_abort(
    tmp_path: Path, edit: Edit, canary_weight: int
) -> None:
    async def rearmed(svc: Any, b: dict[str, Upstream]) -> None:
        engine = svc.controller.engine
        state = engine.states["shop"]
        assert (state.phase, state.step, state.abort_reason) == ("progressing", 0, None)
        await wait_until(lambda: engine.weights()["shop"]["canary"] == canary_weight,
                         what="the new rollout's first step")
        served = await hit(svc.proxy_port, 100)
        assert served["canary"] + served.get("canary2", 0) == canary_weight
        saved = json.loads((tmp_path / "shop.state.json").read_text())["routes"]["shop"]
        assert (saved["phase"], saved["abort_reason"]) == ("paused", None)

    await aborted_service_then(tmp_path, edit, rearmed)
