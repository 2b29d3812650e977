"""Blue/green through a real proxy: the active color takes everything, the preview header reaches
the other one, switching is one config edit, and a watched switch that fails switches back and
stays back (across a restart) until a new rollout (a new `rollout.revision`)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tests.support.configs import rollout_config
from tests.support.load import Load, hit, plain
from tests.support.service import run_service, write_config
from tests.support.upstream import Upstream, run_upstreams
from tests.support.waiting import wait_until

PREVIEW = {"X-Splitproxy-Preview": "1"}


def blue_green(b: dict[str, Upstream], active: str, **kw: Any) -> dict[str, Any]:
    # The preview header is off unless configured, as the pin header.
    return rollout_config({"blue": b["blue"], "green": b["green"]}, strategy="blue-green",
                          active=active, preview_header="X-Splitproxy-Preview", **kw)


def switch(path: Path, cfg: dict[str, Any], svc: Any, **route: Any) -> dict[str, Any]:
    """Rewrite the config with `route` fields changed and reload it; returns the new dict."""
    new = copy.deepcopy(cfg)
    new["routes"][0].update(route)
    write_config(path, new)
    assert svc.controller.reload() is True
    return new


async def test_active_color_takes_all_traffic_preview_reaches_the_other(tmp_path: Path) -> None:
    async with run_upstreams("blue", "green") as b:
        path = tmp_path / "shop.yaml"
        cfg = blue_green(b, "blue")
        write_config(path, cfg)
        async with run_service(path, watch=False) as svc:
            assert await hit(svc.proxy_port, 30) == {"blue": 30}
            assert await hit(svc.proxy_port, 5, PREVIEW) == {"green": 5}

            switch(path, cfg, svc, active="green")
            # reload() is synchronous: by the time it returns the one new table is in place.
            assert dict(((r, v), w) for r, v, w in svc.controller.weights()) == {
                ("shop", "blue"): 0, ("shop", "green"): 100}
            assert await hit(svc.proxy_port, 30) == {"green": 30}
            assert await hit(svc.proxy_port, 5, PREVIEW) == {"blue": 5}


# Every request of green fails: a few of the guard's 3 s slices (see test_auto_revert).
ABORT_WAIT = 20.0


async def test_a_failing_switch_switches_back_and_stays_until_the_config_changes(
    tmp_path: Path,
) -> None:
    analysis = {"interval": "0.5s", "max_error_rate": 0.01}
    async with run_upstreams("blue", "green", "green2") as b:
        b["green"].fail_all = True
        path = tmp_path / "shop.yaml"
        cfg = blue_green(b, "blue", analysis=analysis)
        write_config(path, cfg)
        async with run_service(path, watch=False) as svc:
            engine = svc.controller.engine
            async with Load(svc.proxy_port, {"a": plain, "b": plain}).running() as load:
                await wait_until(lambda: len(load.hits) >= 20, what="traffic on blue")
                cfg = switch(path, cfg, svc, active="green")
                await wait_until(lambda: engine.states["shop"].phase == "aborted",
                                 what="the switch back", timeout=ABORT_WAIT)
                aborted_at = engine.states["shop"].aborted_at
                assert aborted_at is not None
                # Three more intervals: blue stays, analysis does not flap back to green.
                await wait_until(lambda: len(load.since(aborted_at + 1.5)) >= 20,
                                 what="traffic after the switch back")
            after = {h.served_by for h in load.since(aborted_at)}
            assert after == {"blue"}
            assert {h.served_by for h in load.hits} == {"blue", "green"}
            state = engine.states["shop"]
            assert (state.phase, state.previous_active) == ("aborted", "blue")
            assert (state.abort_reason or "").startswith("guard: green error rate 100% [")
            assert await hit(svc.proxy_port, 5, PREVIEW) == {"green 500": 5}  # still previewable
            await svc.stop(drain=1.0)

        saved = json.loads((tmp_path / "shop.state.json").read_text())["routes"]["shop"]
        assert (saved["phase"], saved["previous_active"]) == ("aborted", "blue")

        green_before = b["green"].requests
        async with run_service(path, watch=False) as svc:
            assert await hit(svc.proxy_port, 20) == {"blue": 20}  # across a restart too
            assert b["green"].requests == green_before

            # Another endpoint for green is not a new rollout: still switched back to blue.
            cfg["routes"][0]["versions"]["green"]["endpoints"] = [b["green2"].url]
            switch(path, cfg, svc)
            assert svc.controller.engine.states["shop"].phase == "aborted"
            assert await hit(svc.proxy_port, 20) == {"blue": 20}
            # A new build of green is announced by its revision: switch to it again, watched.
            cfg = switch(path, cfg, svc, rollout={"revision": "green-2"})
            state = svc.controller.engine.states["shop"]
            assert (state.phase, state.previous_active) == ("idle", "blue")
            assert await hit(svc.proxy_port, 20) == {"green2": 20}


async def test_a_switch_made_while_the_proxy_was_down_then_failing_switches_back(
    tmp_path: Path,
) -> None:
    analysis = {"interval": "0.5s", "max_error_rate": 0.01}
    async with run_upstreams("blue", "green") as b:
        b["green"].fail_all = True
        path = tmp_path / "shop.yaml"
        cfg = blue_green(b, "blue", analysis=analysis)
        write_config(path, cfg)
        async with run_service(path, watch=False) as svc:
            assert await hit(svc.proxy_port, 10) == {"blue": 10}

        # The switch is made in the file while no proxy runs.
        cfg["routes"][0]["active"] = "green"
        write_config(path, cfg)
        async with run_service(path, watch=False) as svc:
            engine = svc.controller.engine
            state = engine.states["shop"]
            # A new run, watched, that knows blue served before it.
            assert (state.phase, state.active, state.previous_active) == ("idle", "green", "blue")
            async with Load(svc.proxy_port, {"a": plain, "b": plain}).running() as load:
                await wait_until(lambda: engine.states["shop"].phase == "aborted",
                                 what="the switch back", timeout=ABORT_WAIT)
                aborted_at = engine.states["shop"].aborted_at
                assert aborted_at is not None
                await wait_until(lambda: len(load.since(aborted_at + 0.5)) >= 20,
                                 what="traffic after the switch back")
            assert {h.served_by for h in load.since(aborted_at)} == {"blue"}
            assert "green" in {h.served_by for h in load.hits}
