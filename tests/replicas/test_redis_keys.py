"""What the shared state looks like in Redis: keys of splitproxy 0.1 are migrated (an abort
stays), a route's current state never expires, and a state its route left fades away."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from splitproxy.control.stores import redis_store
from tests.support.processes import RedisServer
from tests.support.replicas import Replica, replica_config, run_replicas
from tests.support.service import write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

LEGACY = Path(__file__).parent.parent / "fixtures" / "legacy"
TWO_WEEKS_MS = 14 * 24 * 3600 * 1000


def legacy_config(redis: RedisServer, prefix: str) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load((LEGACY / "shop.yaml").read_text())
    cfg["state"] = {"backend": "redis", "url": redis.url, "key_prefix": prefix, "lease": "1s"}
    return cfg


async def test_an_aborted_route_in_format_1_keys_stays_aborted_on_every_replica(
    tmp_path: Path, redis_server: RedisServer, redis_client: aioredis.Redis,
    key_prefix: str,
) -> None:
    # The keys splitproxy 0.1 wrote (with its two-week expiry), under this test's prefix.
    for key, value in json.loads((LEGACY / "redis.json").read_text()).items():
        key = key.replace("splitproxy:", key_prefix, 1)
        await redis_client.set(key, json.dumps(value), px=TWO_WEEKS_MS)
    async with run_replicas(tmp_path, [legacy_config(redis_server, key_prefix)] * 2) as rs:
        for r in rs:
            shop = (await r.status())["routes"][0]
            assert shop["rollout"]["phase"] == "aborted", (r.name, shop["rollout"])
            assert shop["rollout"]["abort_reason"] == "manual: bad build"
            assert shop["versions"]["canary"]["effective_weight"] == 0
        a, b = rs
        ra, rb = await a.rollout(), await b.rollout()
        # Both replicas took the same migrated state: one wrote it, the other adopted it.
        assert (ra["identity"], ra["run"]) == (rb["identity"], rb["run"])
        key = f"{key_prefix}v2:route:shop:{ra['identity']}"
        raw = await redis_client.get(key)
        assert raw is not None, key
        stored = json.loads(raw)
        assert (stored["format"], stored["phase"]) == (2, "aborted")
        assert await redis_client.pttl(key) == -1  # no expiry while the route has this identity


async def test_the_current_state_never_expires_and_a_left_one_does(
    tmp_path: Path, redis_server: RedisServer, redis_client: aioredis.Redis,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_store, "REFRESH_EVERY", 0.2)
    async with run_upstreams("stable", "canary") as ups:
        def config(revision: str) -> dict[str, Any]:
            return replica_config(ups, redis=redis_server, prefix=key_prefix,
                                  rollout={"revision": revision,
                                           "steps": [{"set_weight": 20}, {"pause": {}}]})

        async with run_replicas(tmp_path, [config("v1")]) as (r,):
            first = (await r.rollout())["identity"]
            key = f"{key_prefix}v2:route:shop:{first}"
            assert await redis_client.pttl(key) == -1
            # A TTL set by someone else (a replica that moved on) is lifted again.
            await redis_client.pexpire(key, 60_000)

            async def persisted() -> bool:
                return bool(await redis_client.pttl(key) == -1)

            await wait_until(persisted, what="the key in use made permanent again")

            await reload(r, config("v2"))
            second = (await r.rollout())["identity"]
            assert second != first
            new_key = f"{key_prefix}v2:route:shop:{second}"

            async def retired() -> bool:
                return bool(await redis_client.pttl(key) > 0)

            await wait_until(retired, what="the left state to get an expiry")
            assert TWO_WEEKS_MS - 60_000 < await redis_client.pttl(key) <= TWO_WEEKS_MS
            assert await redis_client.pttl(new_key) == -1
            latest = await redis_client.get(f"{key_prefix}v2:latest:shop")
            assert latest == second.encode()


async def reload(r: Replica, cfg: dict[str, Any]) -> None:
    write_config(r.svc.path, cfg)
    assert r.svc.controller.reload()


async def test_a_state_lost_by_redis_is_written_again_by_the_replicas(
    tmp_path: Path, redis_server: RedisServer, redis_client: aioredis.Redis,
    key_prefix: str,
) -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = replica_config(ups, redis=redis_server, prefix=key_prefix)
        async with run_replicas(tmp_path, [cfg] * 2) as (a, b):
            code, body = await a.act("abort", reason="lost and found")
            assert code == 200, body
            key = f"{key_prefix}v2:route:shop:{body['rollout']['identity']}"

            async def both_aborted() -> bool:
                return all([(await r.rollout())["phase"] == "aborted" for r in (a, b)])

            await wait_until(both_aborted, what="the abort on both replicas")
            await redis_client.delete(key)  # as a Redis restarted without its data

            async def back() -> bool:
                raw = await redis_client.get(key)
                return raw is not None and json.loads(raw)["phase"] == "aborted"

            await wait_until(back, what="the state written again")
            raw = await redis_client.get(key)
            assert raw is not None, key
            stored = json.loads(raw)
            assert stored["abort_reason"] == "manual: lost and found"
            # A replica starting now finds the abort.
            async with run_replicas(tmp_path / "late", [cfg]) as (late,):
                assert (await late.rollout())["phase"] == "aborted"
                assert await late.canary_weight() == 0
