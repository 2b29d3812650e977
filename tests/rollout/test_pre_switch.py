"""A validated blue/green switch against real upstreams (Argo's prePromotionAnalysis): a change
of `active` with `pre_switch` keeps the old color serving while the new one is checked on
its preview traffic; a color whose preview fails is held (aborted, the reason in /status,
`retry` checks again); one that passes is switched to."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from splitproxy.cli.render import render
from splitproxy.control.status import Status
from tests.support.configs import rollout_config
from tests.support.load import Load, hit, plain
from tests.support.ports import refusing_ports
from tests.support.service import admin, run_service, status, write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

PREVIEW = {"X-Splitproxy-Preview": "1"}
# Every preview request of a failing green fails: a few of the guard's slices at most.
HOLD_WAIT = 20.0


def preview(i: int) -> tuple[str, dict[str, str]]:
    return "", PREVIEW


def blue_green(blue: str, green: str, active: str, **kw: Any) -> dict[str, Any]:
    return rollout_config({"blue": blue, "green": green}, strategy="blue-green",
                          active=active, preview_header="X-Splitproxy-Preview", **kw)


def switched(path: Path, cfg: dict[str, Any], svc: Any, **route: Any) -> dict[str, Any]:
    new = copy.deepcopy(cfg)
    new["routes"][0].update(route)
    write_config(path, new)
    assert svc.controller.reload() is True
    return new


async def test_a_switch_to_a_color_without_healthy_endpoints_is_held(tmp_path: Path) -> None:
    async with run_upstreams("blue", "green") as b:
        with refusing_ports() as refusing:
            dead = f"http://127.0.0.1:{refusing()}"
            path = tmp_path / "shop.yaml"
            cfg = blue_green(b["blue"].url, dead, "blue", pre_switch={"duration": "60s"})
            write_config(path, cfg)
            async with run_service(path, watch=False) as svc, admin(svc) as session:
                engine = svc.controller.engine
                cfg = switched(path, cfg, svc, active="green")
                body = await status(session)
                ro = body["routes"][0]["rollout"]
                assert (ro["phase"], ro["pause_reason"], ro["switching_to"]) == (
                    "paused", "validating the new color", "green")
                shown = render(Status.model_validate(body))  # `splitproxy status`
                assert "shop: paused: validating the new color" in shown
                assert "shop: validating the switch to green" in shown
                assert await hit(svc.proxy_port, 20) == {"blue": 20}  # blue still serves
                # Preview traffic (a tester, the load-test harness) meets green's dead endpoint.
                assert await hit(svc.proxy_port, 5, PREVIEW) == {"? 502": 5}
                await wait_until(lambda: engine.states["shop"].phase == "aborted",
                                 what="the switch held", timeout=HOLD_WAIT)
                ro = (await status(session))["routes"][0]["rollout"]
                assert ro["abort_reason"].startswith(
                    "pre-switch: green has no healthy endpoint (all ejected); blue keeps "
                    "serving"), ro["abort_reason"]
                assert ro["switching_to"] is None
                assert await hit(svc.proxy_port, 20) == {"blue": 20}

                # Fixed (another endpoint for green: the same rollout), the operator retries:
                # checked again, and this time switched.
                cfg["routes"][0]["versions"]["green"]["endpoints"] = [b["green"].url]
                cfg["routes"][0]["pre_switch"] = {"duration": "0.3s"}
                switched(path, cfg, svc)
                assert engine.states["shop"].phase == "aborted"
                async with session.post("/routes/shop/retry") as r:
                    assert r.status == 200, await r.text()
                await wait_until(lambda: engine.states["shop"].phase == "idle",
                                 what="the switch after the retry")
                assert await hit(svc.proxy_port, 20) == {"green": 20}


async def test_a_switch_whose_preview_fails_the_guard_is_held(tmp_path: Path) -> None:
    analysis = {"interval": "0.5s", "max_error_rate": 0.01}
    async with run_upstreams("blue", "green") as b:
        b["green"].fail_all = True
        path = tmp_path / "shop.yaml"
        cfg = blue_green(b["blue"].url, b["green"].url, "blue", analysis=analysis,
                         pre_switch={"duration": "1s", "analysis": True})
        write_config(path, cfg)
        async with run_service(path, watch=False) as svc, admin(svc) as session:
            engine = svc.controller.engine
            load = Load(svc.proxy_port, {"users": plain, "tester": preview})
            async with load.running():
                await wait_until(lambda: len(load.hits) >= 20, what="traffic on blue")
                switched(path, cfg, svc, active="green")
                await wait_until(lambda: engine.states["shop"].phase == "aborted",
                                 what="the switch held", timeout=HOLD_WAIT)
            users = {h.served_by for h in load.hits if h.kind == "users"}
            assert users == {"blue"}  # no user ever reached green
            assert {(h.served_by, h.status) for h in load.hits if h.kind == "tester"} >= {
                ("green", 500)}
            ro = (await status(session))["routes"][0]["rollout"]
            assert ro["abort_reason"].startswith("pre-switch guard: green error rate 100% ["), \
                ro["abort_reason"]
            assert await hit(svc.proxy_port, 10) == {"blue": 10}


async def test_a_switch_whose_preview_passes_switches(tmp_path: Path) -> None:
    analysis = {"interval": "0.5s", "max_error_rate": 0.05}
    async with run_upstreams("blue", "green") as b:
        path = tmp_path / "shop.yaml"
        cfg = blue_green(b["blue"].url, b["green"].url, "blue", analysis=analysis,
                         pre_switch={"duration": "1s", "analysis": True})
        write_config(path, cfg)
        async with run_service(path, watch=False) as svc, admin(svc) as session:
            engine = svc.controller.engine
            load = Load(svc.proxy_port, {"users": plain, "tester": preview})
            async with load.running():
                await wait_until(lambda: len(load.hits) >= 20, what="traffic on blue")
                switched(path, cfg, svc, active="green")
                validating = engine.states["shop"]
                assert validating.pause_reason == "validating the new color"
                await wait_until(lambda: engine.states["shop"].phase == "idle",
                                 what="the switch", timeout=HOLD_WAIT)
                switched_at = engine.states["shop"].step_started
                assert switched_at - validating.step_started >= 1.0  # not before `duration`
                await wait_until(lambda: any(h.kind == "users" and h.sent > switched_at + 0.5
                                             for h in load.hits), what="users after it")
            before = {h.served_by for h in load.hits
                      if h.kind == "users" and h.done < validating.step_started + 1.0}
            after = {h.served_by for h in load.hits
                     if h.kind == "users" and h.sent > switched_at + 0.5}
            assert (before, after) == ({"blue"}, {"green"})
            ro = (await status(session))["routes"][0]["rollout"]
            assert (ro["phase"], ro["abort_reason"], ro["switching_to"]) == ("idle", None, None)
            assert ro["guard"]["outcome"] == "pass"
