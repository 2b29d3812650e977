"""Stickiness follows the rollout: a sticky cookie names the version and the run it was earned
in; the next rollout ignores it and places the client again (by hash key, then weight)."""

from __future__ import annotations

from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp

from splitproxy.routing.choose import choose
from tests.support.configs import rollout_config
from tests.support.ports import free_port
from tests.support.service import admin, run_service, running_service, write_config
from tests.support.upstream import Upstream, run_upstreams
from tests.support.waiting import WAIT, wait_until

STICKY = {"cookie": "sp", "hash_header": "X-User-Id"}


def shop(b: dict[str, Upstream], revision: str, first: int) -> dict[str, Any]:
    return rollout_config(b, weights={"stable": 100, "canary": 0}, sticky=STICKY,
                          rollout={"revision": revision,
                                   "steps": [{"set_weight": first}, {"pause": {}}]})


async def get(port: int, headers: dict[str, str]) -> tuple[str, str | None]:
    """(who served, the sticky cookie's value it set, if any)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        async with session.get(f"http://127.0.0.1:{port}/", headers=headers) as resp:
            await resp.read()
            cookie: SimpleCookie = SimpleCookie()
            for line in resp.headers.getall("Set-Cookie", []):
                cookie.load(line)
            value = cookie["sp"].value if "sp" in cookie else None
            return resp.headers["X-Served-By"], value


async def test_a_cookie_of_revision_v1_is_ignored_at_v2_s_first_step(tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, shop(b, "v1", 50))
        async with run_service(path, watch=False) as svc:
            engine = svc.controller.engine
            await wait_until(lambda: engine.weights()["shop"]["canary"] == 50, what="step 1")
            v1_run = engine.states["shop"].run
            # A client earns a canary cookie in v1's run ...
            served, cookie = "", None
            for i in range(50):
                served, cookie = await get(svc.proxy_port, {"X-User-Id": f"early-{i}"})
                if served == "canary":
                    break
            assert (served, cookie) == ("canary", f"canary.{v1_run}")
            async with admin(svc) as session:
                async with session.post("/routes/shop/promote", params={"full": "1"}) as r:
                    assert r.status == 200, await r.text()
            assert engine.weights()["shop"] == {"stable": 0, "canary": 100}

            # ... and brings it back after v2 (a new build behind the same endpoints) starts.
            write_config(path, shop(b, "v2", 1))
            assert svc.controller.reload()
            await wait_until(lambda: engine.weights()["shop"]["canary"] == 1, what="v2 step 1")
            v2_run = engine.states["shop"].run
            assert v2_run != v1_run
            plan = svc.controller.table.routes[0].plan
            users = [f"user-{i}" for i in range(200)]
            expected = {u: choose(plan, 0, None, None, u.encode()) for u in users}
            seen = {}
            for u in users:
                seen[u], cookie = await get(svc.proxy_port,
                                            {"X-User-Id": u, "Cookie": f"sp=canary.{v1_run}"})
                assert cookie == f"{seen[u]}.{v2_run}"  # placed again, in v2's run
            assert seen == expected
            canary = sum(1 for v in seen.values() if v == "canary")
            assert canary <= 6, f"{canary} of 200 at set_weight 1"  # ~1 %, not all of them
            # A cookie of the current run is honoured.
            stable_user = next(u for u in users if seen[u] == "stable")
            again = await get(svc.proxy_port, {"X-User-Id": stable_user,
                                               "Cookie": f"sp=stable.{v2_run}"})
            assert again == ("stable", None)


async def test_every_worker_process_names_the_current_run_in_its_cookies(
    tmp_path: Path,
) -> None:
    async with run_upstreams("stable", "canary") as b:
        cfg = rollout_config(b, weights={"stable": 50, "canary": 50}, sticky={"cookie": "sp"})
        cfg["listen"] = f"127.0.0.1:{free_port()}"  # workers share one port (SO_REUSEPORT)
        async with running_service(tmp_path, cfg, name="shop.yaml", watch=False, workers=2,
                                   start_wait=WAIT * 2) as (svc, _):
            engine = svc.controller.engine
            first = engine.states["shop"].run
            cookies = {(await get(svc.proxy_port, {}))[1] for _ in range(20)}
            assert cookies == {f"stable.{first}", f"canary.{first}"}
            async with admin(svc) as session:
                for action in ("abort", "retry"):
                    async with session.post(f"/routes/shop/{action}") as r:
                        assert r.status == 200, await r.text()
            second = engine.states["shop"].run
            assert second != first

            async def renewed() -> bool:
                seen = {(await get(svc.proxy_port, {}))[1] for _ in range(20)}
                return seen == {f"stable.{second}", f"canary.{second}"}

            await wait_until(renewed, what="both workers on the new run")
