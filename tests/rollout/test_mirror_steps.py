"""`set_mirror` steps through a real Service (the rollout engine, the routing table swap, the
data plane) and real upstreams: from its step on, copies of the route's requests reach the
canary at weight 0, marked, and are compared; a later `set_mirror: 0`, an abort and the
promotion each stop them; `/status` and `splitproxy status` show the mirror in force."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from splitproxy.cli.render import render
from splitproxy.control.service import Service
from splitproxy.control.status import Status
from splitproxy.dataplane.workers import WorkerPool
from tests.support.configs import rollout_config
from tests.support.ports import free_port
from tests.support.rawhttp import get
from tests.support.service import admin, run_service, running_service, status, write_config
from tests.support.shadowing import Served, json_reply, serving
from tests.support.waiting import WAIT, wait_until


def copies(svc: Service) -> int:
    return sum(n for (route, to, _), n in svc.proxy.stats.shadow.items()
               if (route, to) == ("shop", "canary"))


def data_plane_mirror(svc: Service) -> Any:
    """The shadow traffic the data plane's current table copies with (None: none)."""
    (route,) = svc.proxy.runtime.routes  # type: ignore[attr-defined]
    return route.mirror


async def send(svc: Service, primary: Served, prefix: str, n: int) -> None:
    """`n` requests, each answered by the primary (the client never sees the canary)."""
    for i in range(n):
        answer = await get(svc.proxy_port, f"/{prefix}/{i}")
        assert (answer.status, answer.header("x-served-by")) == (200, "stable")
    await wait_until(lambda: sum(r.target.startswith(f"/{prefix}/") for r in primary.requests)
                     == n, what=f"the primary's {prefix} requests")


def config(stable: Served, canary: Served, steps: list[Any]) -> dict[str, Any]:
    return rollout_config({"stable": stable.url, "canary": canary.url},
                          weights={"stable": 100, "canary": 0}, rollout={"steps": steps})


async def test_a_mirror_step_copies_to_the_canary_until_a_later_step_turns_it_off(
        tmp_path: Path) -> None:
    compare = {"body": True, "ignore_headers": ["X-Served-By"],
               "ignore_json_fields": ["generated_at"]}
    steps = [{"set_mirror": {"percent": 50, "compare": compare}}, {"pause": {}},
             {"set_mirror": 0}, {"pause": {}}, {"set_weight": 100}]
    async with serving(json_reply("stable")) as stable, \
            serving(json_reply("canary")) as canary:
        path = tmp_path / "shop.yaml"
        write_config(path, config(stable, canary, steps))
        async with run_service(path, watch=False) as svc, admin(svc) as session:
            engine = svc.controller.engine
            await wait_until(lambda: engine.states["shop"].step == 1, what="set_mirror 50")
            body = await status(session)
            assert body["routes"][0]["rollout"]["mirror"] == {"to": "canary", "percent": 50}
            assert "shop: mirror: 50% copied to canary" in render(Status.model_validate(body))

            await send(svc, stable, "on", 10)
            await wait_until(lambda: copies(svc) == 5, what=lambda: f"{copies(svc)} copies")
            assert svc.proxy.stats.shadow == {("shop", "canary", "match"): 5}
            assert sorted(r.target for r in canary.requests) == [
                f"/on/{i}" for i in (1, 3, 5, 7, 9)]
            assert all(r.header("x-splitproxy-shadow") == "1" for r in canary.requests)

            async with session.post("/routes/shop/promote") as r:  # past the pause
                assert r.status == 200, await r.text()
            await wait_until(lambda: engine.states["shop"].step == 3, what="set_mirror 0")
            await wait_until(lambda: data_plane_mirror(svc) is None,
                             what="the data plane's table without the mirror")
            assert (await status(session))["routes"][0]["rollout"]["mirror"] is None
            await send(svc, stable, "off", 10)
        assert len(canary.requests) == 5 and copies(svc) == 5


@pytest.mark.parametrize(("action", "params"), [("abort", {"reason": "test"}),
                                                 ("promote", {"full": "1"})])
async def test_an_abort_and_the_promotion_stop_the_copies(
        tmp_path: Path, action: str, params: dict[str, str]) -> None:
    steps = [{"set_mirror": 100}, {"pause": {}}, {"set_weight": 100}]
    async with serving(json_reply("stable")) as stable, \
            serving(json_reply("canary")) as canary:
        path = tmp_path / "shop.yaml"
        write_config(path, config(stable, canary, steps))
        async with run_service(path, watch=False) as svc, admin(svc) as session:
            engine = svc.controller.engine
            await wait_until(lambda: engine.states["shop"].step == 1, what="set_mirror")
            await send(svc, stable, "on", 3)
            await wait_until(lambda: copies(svc) == 3, what="three copies")
            async with session.post(f"/routes/shop/{action}", params=params) as r:
                assert r.status == 200, await r.text()
            await wait_until(lambda: data_plane_mirror(svc) is None,
                             what=f"the table after the {action}")
            assert (await status(session))["routes"][0]["rollout"]["mirror"] is None
            if action == "abort":  # after the promotion the canary answers itself
                await send(svc, stable, "after", 3)
        assert len(canary.requests) == 3


async def test_with_workers_every_worker_copies_from_the_step_on(tmp_path: Path) -> None:
    """The mirror in force reaches the worker processes with the routing table: each worker
    copies the requests it serves (100%: every one) and reports the comparisons."""
    async with serving(json_reply("stable")) as stable, \
            serving(json_reply("stable")) as canary:
        cfg = config(stable, canary, [{"set_mirror": 100}, {"pause": {}}])
        cfg["listen"] = f"127.0.0.1:{free_port()}"  # workers share one port (SO_REUSEPORT)
        async with running_service(tmp_path, cfg, name="shop.yaml", watch=False, workers=2,
                                   start_wait=WAIT * 2) as (svc, _):
            pool = svc.proxy
            assert isinstance(pool, WorkerPool)
            engine = svc.controller.engine
            await wait_until(lambda: engine.states["shop"].step == 1, what="set_mirror 100")

            workers = list(pool._workers.values())
            rounds = itertools.count()

            async def both_copy() -> bool:
                await send(svc, stable, f"warm-{next(rounds)}", 10)
                return len(workers) == 2 and all(
                    w.report is not None and w.report.shadow.get(("shop", "canary", "match"))
                    for w in workers)

            await wait_until(both_copy, what="both workers copying (their reports)")
            await send(svc, stable, "all", 20)
            await wait_until(lambda: sum(r.target.startswith("/all/") for r in canary.requests)
                             == 20, what="a copy of each of the 20 requests")
            assert all(r.header("x-splitproxy-shadow") == "1" for r in canary.requests)
