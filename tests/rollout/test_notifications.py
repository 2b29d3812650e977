"""End to end: a real Service notifies real aiohttp receivers of every transition of a
rollout (steps, a pause and why, a guard abort with its numbers, a retry, a promotion), in
order, retrying the abort's notification after a 500, in Slack's format where asked, while a
receiver that never answers holds nothing up."""

from __future__ import annotations

from pathlib import Path

from tests.support.configs import rollout_config
from tests.support.fakes import run_receiver
from tests.support.load import Load, plain
from tests.support.service import admin, metric, run_service, scrape, write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until


async def test_every_transition_is_notified_in_order_and_retried_without_holding_anything(
    tmp_path: Path,
) -> None:
    async with run_upstreams("stable", "canary") as b, \
            run_receiver(fail_first={"abort"}, fail_path="/json", hold={"/stuck"}) as rec:
        hooks = [{"on": "all", "url": rec.url("/json")},
                 {"on": ["abort", "promoted"], "url": rec.url("/slack"), "format": "slack"},
                 {"on": "all", "url": rec.url("/stuck"), "timeout": "60s"}]
        path = tmp_path / "shop.yaml"
        write_config(path, rollout_config(
            b, weights={"stable": 100, "canary": 0},
            analysis={"interval": "0.5s", "max_error_rate": 0.01},
            rollout={"revision": "v1", "steps": [{"set_weight": 50}, {"pause": {}}],
                     "webhooks": hooks}))
        async with run_service(path, watch=False) as svc, admin(svc) as session:
            engine = svc.controller.engine

            def events() -> list[str]:
                return [body["event"] for body in rec.on("/json")]

            # The first step: weight 50 done, then the pause waits for a promote.
            await wait_until(lambda: events() == ["post-step", "step-started", "paused"],
                             what="the first step's notifications")
            assert rec.on("/json")[2]["reason"] == "waiting for promote"
            assert rec.on("/json")[1]["weights"] == {"stable": 50, "canary": 50}

            # The canary fails: the guard aborts; the abort's first delivery gets a 500.
            async with Load(svc.proxy_port, {"a": plain, "b": plain}).running():
                b["canary"].fail_all = True
                await wait_until(lambda: engine.states["shop"].phase == "aborted",
                                 what="the guard's abort", timeout=30)
                await wait_until(lambda: events()[-2:] == ["abort", "abort"],
                                 what="the abort notification, retried")
            attempts = [(h["X-Splitproxy-Attempt"], h["X-Splitproxy-Delivery"])
                        for p, h, body in rec.got if p == "/json" and body["event"] == "abort"]
            assert [a for a, _ in attempts] == ["1", "2"] and len({d for _, d in attempts}) == 1
            abort = rec.on("/json")[-1]
            state = engine.states["shop"]
            assert (abort["aborted_by"], abort["run"], abort["reason"]) == (
                "guard", state.run, state.abort_reason)
            verdict = abort["verdict"]
            assert (verdict["key"], verdict["outcome"]) == ("canary:error_rate", "fail")
            assert verdict["events"] > 0 and verdict["log_e_fail"] >= 0
            assert abort["weights"] == {"stable": 100, "canary": 0}
            [slack] = rec.on("/slack")
            assert slack["text"].startswith(":rotating_light: shop: ABORTED: guard: canary ")
            assert slack["blocks"][2]["text"]["text"].startswith("```canary error rate ")

            # Retry (healthy again): a new run starts at step 1; promote ends it.
            b["canary"].fail_all = False
            async with session.post("/routes/shop/retry") as resp:
                assert resp.status == 200
            await wait_until(lambda: events()[-1] == "paused", what="the retried run's pause")
            async with session.post("/routes/shop/promote") as resp:
                assert resp.status == 200
            await wait_until(lambda: events()[-1] == "promoted", what="the promotion")
            assert events() == [
                "post-step", "step-started", "paused", "abort", "abort",
                "step-started", "post-step", "step-started", "paused",
                "resumed", "post-step", "promoted"]
            assert len(rec.on("/slack")) == 2

            # All along, the stuck receiver held its first request, and nothing else waited.
            assert [body["event"] for body in rec.on("/stuck")] == ["post-step"]
            samples = await scrape(session)
            assert metric(samples, "splitproxy_notifications_total", event="abort",
                          result="delivered") == 2  # /json (after its retry) and /slack
            assert metric(samples, "splitproxy_notifications_total", event="promoted",
                          result="delivered") == 2
