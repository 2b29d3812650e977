"""An abort's notification says where the traffic went and whether that version can serve:
through a real Service, a real active health check failing on the baseline and the toolkit's
notification `Receiver`, an abort onto a dead baseline is told loudly (JSON and Slack), one
onto a healthy baseline says so quietly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.configs import rollout_config
from tests.support.fakes import Receiver, run_receiver
from tests.support.service import admin, metric, run_service, scrape, write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

WARNING = "WARNING: stable has no healthy endpoint: its requests fail until one is back"


def config(ups: Any, rec: Receiver, stable_check: str | None) -> dict[str, Any]:
    hooks = [{"on": "abort", "url": rec.url("/json")},
             {"on": "abort", "url": rec.url("/slack"), "format": "slack"}]
    cfg = rollout_config(ups, weights={"stable": 100, "canary": 0},
                         rollout={"steps": [{"set_weight": 50}, {"pause": {}}],
                                  "webhooks": hooks})
    if stable_check is not None:  # the upstream answers /status/<code> with that code
        cfg["routes"][0]["versions"]["stable"]["health_check"] = {
            "path": stable_check, "interval": "0.1s", "unhealthy_threshold": 1}
    return cfg


async def test_an_abort_onto_a_baseline_without_a_healthy_endpoint_is_notified_loudly(
        tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as ups, run_receiver() as rec:
        path = tmp_path / "shop.yaml"
        write_config(path, config(ups, rec, stable_check="/status/503"))
        async with run_service(path, watch=False) as svc, admin(svc) as session:
            engine = svc.controller.engine
            await wait_until(lambda: engine.states["shop"].step == 1, what="set_weight 50")
            await wait_until(lambda: ("shop", "stable") in engine.all_down(),
                             what="stable down on its health check")
            async with session.post("/routes/shop/abort", params={"reason": "bad build"}) as r:
                assert r.status == 200, await r.text()
            await wait_until(lambda: bool(rec.on("/json") and rec.on("/slack")),
                             what="the abort's notifications")
            samples = await scrape(session)
        (body,) = rec.on("/json")
        assert (body["event"], body["revert_to"], body["revert_to_healthy"]) == (
            "abort", "stable", False)
        assert body["weights"] == {"stable": 100, "canary": 0}  # the abort stands
        assert body["message"].endswith(WARNING), body["message"]
        (slack,) = rec.on("/slack")
        assert WARNING in slack["text"]
        assert metric(samples, "splitproxy_rollout_aborts_onto_unhealthy_baseline_total",
                      route="shop") == 1


async def test_an_abort_onto_a_healthy_baseline_says_so_without_a_warning(
        tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as ups, run_receiver() as rec:
        path = tmp_path / "shop.yaml"
        write_config(path, config(ups, rec, stable_check="/status/200"))
        async with run_service(path, watch=False) as svc, admin(svc) as session:
            engine = svc.controller.engine
            await wait_until(lambda: engine.states["shop"].step == 1, what="set_weight 50")
            async with session.post("/routes/shop/abort", params={"reason": "bad build"}) as r:
                assert r.status == 200, await r.text()
            await wait_until(lambda: bool(rec.on("/json") and rec.on("/slack")),
                             what="the abort's notifications")
        (body,) = rec.on("/json")
        assert (body["revert_to"], body["revert_to_healthy"]) == ("stable", True)
        assert "WARNING" not in body["message"] and "WARNING" not in rec.on("/slack")[0]["text"]
