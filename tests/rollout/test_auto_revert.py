"""End to end: a real canary that starts answering 500 under steady clients is taken out of
traffic by the proxy itself within `interval * failure_limit + 1 s` of its first error.

Real sockets throughout: aiohttp clients -> splitproxy Service -> aiohttp upstreams; the
analysis loop runs in real time with a 1 s interval."""

from __future__ import annotations

from pathlib import Path

from .conftest import (
    Load,
    admin,
    metric,
    plain,
    rollout_config,
    run_backends,
    run_service,
    scrape,
    status,
    wait_until,
    write_config,
)

INTERVAL, FAILURE_LIMIT = 1.0, 2
ANALYSIS = {"interval": f"{INTERVAL}s", "window": "5s", "min_requests": 20,
            "failure_limit": FAILURE_LIMIT, "max_error_rate": 0.01}
STICKY = {"pin_header": "X-Splitproxy-Version", "cookie": "sp", "hash_header": "X-User-Id"}


def user(i: int) -> tuple[str, dict[str, str]]:
    uid = f"user-{i % 40}"
    return uid, {"X-User-Id": uid}


def pinned(i: int) -> tuple[str, dict[str, str]]:
    return "canary", {"X-Splitproxy-Version": "canary"}


async def test_a_failing_canary_is_out_of_traffic_within_interval_times_failure_limit(
    tmp_path: Path,
) -> None:
    async with run_backends("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, rollout_config(
            b, weights={"stable": 50, "canary": 50}, sticky=STICKY, analysis=ANALYSIS,
            rollout={"steps": [{"set_weight": 50}, {"pause": {}}]}))
        async with run_service(path, watch=False) as svc:
            engine = svc.controller.engine

            def passes() -> int:
                return sum(1 for c in engine.states["shop"].checks
                           if c["result"] == "pass" and c["requests"] >= 20)

            run = engine.states["shop"].run

            def cookie(i: int) -> tuple[str, dict[str, str]]:
                # A client the canary's Set-Cookie made sticky in this run.
                return "sp=canary", {"Cookie": f"sp=canary.{run}"}

            kinds = {"plain-a": plain, "plain-b": plain, "cookie": cookie, "user": user,
                     "pinned": pinned}
            async with Load(svc.proxy_port, kinds).running() as load:
                await wait_until(lambda: passes() >= 1, what="a healthy verdict")
                b["canary"].mode = "fail"
                await wait_until(lambda: engine.states["shop"].phase == "aborted",
                                 what="the automatic abort")
                aborted_at = engine.states["shop"].aborted_at
                assert aborted_at is not None
                await wait_until(lambda: len(load.since(aborted_at + 0.5)) >= 50,
                                 what="traffic after the abort")

            assert not load.failures, load.failures[:5]
            hits = load.hits
            canary_errors = [h for h in hits if h.served_by == "canary" and h.status == 500]
            first_error = min(h.done for h in canary_errors)
            last_canary = max(h.done for h in hits
                              if h.served_by == "canary" and h.kind != "pinned")
            budget = INTERVAL * FAILURE_LIMIT + 1.0
            assert last_canary - first_error <= budget, (
                f"canary served for {last_canary - first_error:.2f}s after its first error")

            before = [h for h in hits if h.done < first_error]
            after = load.since(aborted_at)
            # Nothing reaches the canary after the abort but the pin header.
            assert {h.served_by for h in after if h.kind != "pinned"} == {"stable"}
            assert {h.served_by for h in after if h.kind == "pinned"} == {"canary"}
            # Sticky-cookie clients of the canary go to the baseline.
            assert {h.served_by for h in before if h.kind == "cookie"} == {"canary"}
            assert {h.served_by for h in after if h.kind == "cookie"} == {"stable"}
            # Hashed users of the canary go to the baseline.
            canary_users = {h.key for h in before if h.kind == "user" and h.served_by == "canary"}
            assert canary_users
            assert {h.served_by for h in after if h.key in canary_users} == {"stable"}

            async with admin(svc) as session:
                samples = await scrape(session)
                shop = (await status(session))["routes"][0]

        assert metric(samples, "splitproxy_rollout_aborts_total", route="shop") == 1
        assert metric(samples, "splitproxy_rollout_phase", route="shop", phase="aborted") == 1
        assert metric(samples, "splitproxy_route_weight", route="shop", version="canary") == 0

        rollout = shop["rollout"]
        assert rollout["phase"] == "aborted"
        assert rollout["abort_reason"].startswith("2 failing checks in a row: fail: canary")
        assert "error_rate=" in rollout["abort_reason"]
        last = rollout["checks"][-1] if rollout["checks"][-1]["result"] == "fail" else \
            next(c for c in reversed(rollout["checks"]) if c["result"] == "fail")
        [error_rate] = [m for m in last["metrics"] if m["metric"] == "error_rate"]
        assert error_rate["result"] == "fail"
        assert error_rate["value"] > 0.01 and error_rate["limit"] == 0.01
        assert last["requests"] >= 20
        assert shop["versions"]["canary"]["effective_weight"] == 0
        assert shop["versions"]["stable"]["effective_weight"] == 100
