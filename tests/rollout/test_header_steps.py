"""Header and cookie route steps through a real proxy and real upstreams: from their step on,
matching requests reach the canary even at weight 0, others do not; an abort and the
promotion remove them; /status shows them. And a half-percent weight step, by weight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from splitproxy.cli.render import render
from splitproxy.control.status import Status
from tests.support.configs import rollout_config
from tests.support.load import hit
from tests.support.service import admin, run_service, status, write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

TESTER = {"X-Tester": "qa-7"}
COOKIE = {"Cookie": "theme=dark; canary=always"}
STEPS: list[Any] = [
    {"set_header_route": {"header": "X-Tester", "match": "regex", "value": "qa-[0-9]+"}},
    {"set_header_route": {"cookie": "canary", "value": "always"}},
    {"pause": {}},
    {"set_weight": 100},
]


def header_routes(body: dict[str, Any]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = body["routes"][0]["rollout"]["header_routes"]
    return routes


async def test_a_header_step_routes_matching_requests_at_weight_0_until_abort(
        tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as ups:
        path = tmp_path / "shop.yaml"
        write_config(path, rollout_config(ups, weights={"stable": 100, "canary": 0},
                                          rollout={"steps": STEPS}))
        async with run_service(path, watch=False) as svc, admin(svc) as session:
            engine = svc.controller.engine
            await wait_until(lambda: engine.states["shop"].step == 2, what="the header steps")
            body = await status(session)
            assert header_routes(body) == [
                {"header": "X-Tester", "cookie": None, "match": "regex", "value": "qa-[0-9]+"},
                {"header": None, "cookie": "canary", "match": "exact", "value": "always"}]
            versions = body["routes"][0]["versions"]
            assert versions["canary"]["effective_weight"] == 0
            shown = render(Status.model_validate(body))  # what `splitproxy status` prints
            assert "shop: to the canary: header X-Tester regex 'qa-[0-9]+'" in shown
            assert "shop: to the canary: cookie canary exact 'always'" in shown

            assert await hit(svc.proxy_port, 20) == {"stable": 20}
            assert await hit(svc.proxy_port, 10, TESTER) == {"canary": 10}
            assert await hit(svc.proxy_port, 10, COOKIE) == {"canary": 10}
            assert await hit(svc.proxy_port, 10, {"X-Tester": "qa-7x"}) == {"stable": 10}
            assert await hit(svc.proxy_port, 10, {"Cookie": "canary=never"}) == {"stable": 10}

            async with session.post("/routes/shop/abort", params={"reason": "test"}) as r:
                assert r.status == 200, await r.text()
            assert header_routes(await status(session)) == []
            assert await hit(svc.proxy_port, 10, TESTER) == {"stable": 10}
            assert await hit(svc.proxy_port, 10, COOKIE) == {"stable": 10}


async def test_the_promotion_removes_the_header_routes(tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as ups:
        path = tmp_path / "shop.yaml"
        steps = [STEPS[0], {"pause": {}}, {"set_weight": 50}, {"pause": {}}]
        write_config(path, rollout_config(ups, weights={"stable": 100, "canary": 0},
                                          rollout={"steps": steps}))
        async with run_service(path, watch=False) as svc, admin(svc) as session:
            engine = svc.controller.engine
            await wait_until(lambda: engine.states["shop"].step == 1, what="the header step")
            assert await hit(svc.proxy_port, 10, TESTER) == {"canary": 10}
            async with session.post("/routes/shop/promote") as r:  # past the first pause
                assert r.status == 200, await r.text()
            await wait_until(lambda: engine.states["shop"].step == 3, what="set_weight 50")
            assert await hit(svc.proxy_port, 10, TESTER) == {"canary": 10}  # still in force
            async with session.post("/routes/shop/promote", params={"full": "1"}) as r:
                assert r.status == 200, await r.text()
            body = await status(session)
            assert body["routes"][0]["rollout"]["phase"] == "promoted"
            assert header_routes(body) == []
            assert engine.header_routes() == {"shop": ()}
            assert await hit(svc.proxy_port, 10) == {"canary": 10}


async def test_half_a_percent_is_exactly_one_request_in_200_by_weight(tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as ups:
        path = tmp_path / "shop.yaml"
        write_config(path, rollout_config(ups, weights={"stable": 100, "canary": 0},
                                          rollout={"steps": [{"set_weight": 0.5},
                                                             {"pause": {}}]}))
        async with run_service(path, watch=False) as svc, admin(svc) as session:
            engine = svc.controller.engine
            await wait_until(lambda: engine.states["shop"].step == 1, what="set_weight 0.5")
            versions = (await status(session))["routes"][0]["versions"]
            assert (versions["canary"]["effective_weight"],
                    versions["stable"]["effective_weight"]) == (0.5, 99.5)
            assert await hit(svc.proxy_port, 400) == {"stable": 398, "canary": 2}
            text = await (await session.get("/metrics")).text()
            assert 'splitproxy_route_weight{route="shop",version="canary"} 0.5' in text
