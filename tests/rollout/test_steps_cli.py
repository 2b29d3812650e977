"""Rollout steps end to end with short durations, driven by the real `splitproxy` CLI in a
subprocess talking to the real admin API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from splitproxy.cli.exitcodes import ExitCode
from tests.support.cli import cli
from tests.support.configs import proxy_config, route
from tests.support.load import hit
from tests.support.service import run_service, write_config
from tests.support.upstream import Upstream, run_upstreams
from tests.support.waiting import wait_until

STEPS = [
    {"set_weight": 20},
    {"pause": "1s"},
    {"set_weight": 50},
    {"pause": {}},
    {"set_weight": 100},
]


def two_routes(b: dict[str, Upstream]) -> dict[str, Any]:
    shop = route({"stable": b["stable"].url, "canary": b["canary"].url},
                 {"stable": 100, "canary": 0}, sticky={"pin_header": "X-Splitproxy-Version"})
    shop["rollout"] = {"revision": "v2.2", "steps": STEPS}
    plain = route({"stable": b["stable"].url}, name="plain", match={"path_prefix": "/plain"})
    # Route order matters: /plain first, everything else to shop.
    return proxy_config([plain, shop])


async def test_steps_advance_on_time_wait_for_promote_and_the_cli_drives_them(
    tmp_path: Path,
) -> None:
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, two_routes(b))
        async with run_service(path, watch=False) as svc:
            loop = asyncio.get_running_loop()
            started = loop.time()
            admin_url = f"http://127.0.0.1:{svc.admin_port}"

            def canary_weight() -> float:
                return dict(((r, v), w) for r, v, w in svc.controller.weights())[
                    ("shop", "canary")]

            took_20 = await wait_until(lambda: canary_weight() == 20, what="set_weight 20")
            at_20 = loop.time()
            assert took_20 <= 0.5
            await wait_until(lambda: canary_weight() == 50, what="set_weight 50")
            held = loop.time() - at_20
            assert 0.95 <= held <= 1.8, f"pause: 1s held the weight for {held:.2f}s"
            state = svc.controller.engine.states["shop"]
            assert (state.phase, state.pause_reason, state.step) == (
                "paused", "waiting for promote", 3)

            # `pause: {}` waits, however long.
            await asyncio.sleep(1.2)
            assert canary_weight() == 50
            assert svc.controller.engine.states["shop"].phase == "paused"
            served = await hit(svc.proxy_port, 100)
            assert served == {"stable": 50, "canary": 50}

            done = await cli("promote", "shop", "--admin", admin_url)
            assert (done.code, done.err) == (0, ""), done
            assert done.out.strip() == "shop: promote ok: phase progressing, step 4/5"
            await wait_until(lambda: svc.controller.engine.states["shop"].phase == "promoted",
                             what="the last step")
            assert canary_weight() == 100
            assert await hit(svc.proxy_port, 20) == {"canary": 20}

            shown = await cli("status", "--admin", admin_url)
            assert (shown.code, shown.err) == (0, ""), shown
            rows = [line.split() for line in shown.out.splitlines()]
            assert ["ROUTE", "PHASE", "STEP", "VERSION", "WEIGHT", "EFFECTIVE"] in \
                [r[:6] for r in rows]
            shop_at = next(i for i, r in enumerate(rows) if r[:1] == ["shop"])
            # Configured 100/0, effective 0/100: the steps own the weights.
            assert rows[shop_at][:6] == ["shop", "promoted", "5/5", "stable", "100", "0"]
            assert rows[shop_at + 1][:3] == ["canary", "0", "100"]
            assert ["plain", "idle", "-", "stable"] in [r[:4] for r in rows]

            again = await cli("promote", "shop", "--admin", admin_url)
            assert again.code == ExitCode.REFUSED
            assert again.out == ""
            assert again.err.strip() == "error: 409: rollout is promoted"

            no_steps = await cli("promote", "plain", "--admin", admin_url)
            assert no_steps.code == ExitCode.REFUSED
            assert no_steps.err.strip() == "error: 409: this route has no rollout steps to promote"

            unknown = await cli("promote", "nope", "--admin", admin_url)
            assert unknown.code == ExitCode.NOT_FOUND
            assert "404" in unknown.err and "no route named 'nope'" in unknown.err

            assert loop.time() - started < 15


async def test_promote_full_and_pause_resume_through_the_cli(tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        cfg = two_routes(b)
        cfg["routes"][1]["rollout"]["steps"] = [
            {"set_weight": 20}, {"pause": "1h"}, {"set_weight": 50}, {"pause": {}},
            {"set_weight": 100}]
        write_config(path, cfg)
        async with run_service(path, watch=False) as svc:
            admin_url = f"http://127.0.0.1:{svc.admin_port}"
            engine = svc.controller.engine
            await wait_until(lambda: engine.weights()["shop"]["canary"] == 20, what="step 1")

            paused = await cli("pause", "shop", "--admin", admin_url)
            assert paused.code == 0, paused
            assert engine.states["shop"].pause_reason == "manual"
            twice = await cli("pause", "shop", "--admin", admin_url)
            assert (twice.code, twice.err.strip()) == (
                ExitCode.REFUSED,
                "error: 409: only a progressing rollout can be paused (it is paused: manual)")
            resumed = await cli("resume", "shop", "--admin", admin_url)
            assert resumed.code == 0, resumed
            assert engine.states["shop"].phase == "progressing"

            full = await cli("promote", "shop", "--full", "--admin", admin_url)
            assert full.code == 0, full
            assert full.out.strip() == "shop: promote ok: phase promoted, step 5/5"
            assert engine.weights()["shop"] == {"stable": 0, "canary": 100}

            aborted = await cli("abort", "shop", "--reason", "rollback drill",
                                "--admin", admin_url)
            assert aborted.code == 0, aborted
            assert engine.states["shop"].abort_reason == "manual: rollback drill"
            assert await hit(svc.proxy_port, 10) == {"stable": 10}

            retried = await cli("retry", "shop", "--admin", admin_url)
            assert retried.code == 0, retried
            assert retried.out.strip() == "shop: retry ok: phase progressing, step 0/5"
            await wait_until(lambda: engine.weights()["shop"]["canary"] == 20,
                             what="step 1 again")
