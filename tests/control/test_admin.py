"""The admin API on its own port: health, readiness while draining, /status, bearer token,
and never through the proxy port."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from splitproxy.config.models import ConfigError
from splitproxy.control.service import Service
from tests.support.configs import proxy_config, route, split_config
from tests.support.load import served_by
from tests.support.rawhttp import raw_client
from tests.support.service import admin, run_service, running_service, status, write_config
from tests.support.upstream import run_upstream, run_upstreams
from tests.support.waiting import WAIT, wait_until

ADMIN_PATHS = ("/healthz", "/readyz", "/metrics", "/status")


async def test_healthz_and_readyz_answer_200_while_serving(tmp_path: Path) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})])
        async with running_service(tmp_path, cfg) as (svc, _), admin(svc) as session:
            for path in ("/healthz", "/readyz"):
                async with session.get(path) as resp:
                    assert resp.status == 200, (path, await resp.text())


async def test_readyz_is_503_while_draining_and_in_flight_requests_finish(
    tmp_path: Path,
) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})])
        async with running_service(tmp_path, cfg) as (svc, _), admin(svc) as session:
            async with raw_client(svc.proxy_port) as c:
                slow = asyncio.create_task(c.request("GET", "/slow?delay=1"))
                await wait_until(lambda: up.in_flight == 1, WAIT, "slow request upstream")
                stopping = asyncio.create_task(svc.stop(drain=2.0))

                async def not_ready() -> bool:
                    async with session.get("/readyz") as resp:
                        return resp.status == 503

                await wait_until(not_ready, 0.5, "/readyz 503 while draining")
                async with session.get("/healthz") as resp:
                    assert resp.status == 200  # alive, just not ready
                assert not slow.done()
                answer = await asyncio.wait_for(slow, WAIT)
                assert answer.status == 200 and answer.text == "stable"
            await asyncio.wait_for(stopping, WAIT)


async def test_status_reports_config_routes_weights_and_realized_split(tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as ups:
        async with running_service(tmp_path, split_config(ups)) as (svc, path):
            async with admin(svc) as session, raw_client(svc.proxy_port) as c:
                assert await served_by(c, 100) == {"stable": 90, "canary": 10}

                async def window_full() -> bool:
                    versions = (await status(session))["routes"][0]["versions"]
                    return bool(sum(v["requests_in_window"] for v in versions.values()) == 100)

                await wait_until(window_full, 2.5, "the sampler to see 100 requests")
                body = await status(session)

        config = body["config"]
        assert config["path"] == str(path)
        assert config["generation"] == 1
        assert set(config["last_reload"]) >= {"time", "result", "error"}
        assert config["last_reload"]["error"] is None
        assert body["ready"] is True
        [shop] = body["routes"]
        assert shop["name"] == "shop"
        assert set(shop["versions"]) == {"stable", "canary"}
        stable, canary = shop["versions"]["stable"], shop["versions"]["canary"]
        assert (stable["configured_weight"], canary["configured_weight"]) == (90, 10)
        assert (stable["effective_weight"], canary["effective_weight"]) == (90, 10)
        assert (stable["realized_share"], canary["realized_share"]) == (0.9, 0.1)
        assert stable["endpoints"] == [
            {"url": ups["stable"].url, "up": True, "consecutive_failures": 0, "ejections": 0,
             "passive": "up", "active": "off", "active_last_result": "none",
             "active_last_error": None}
        ]
        assert canary["endpoints"][0]["url"] == ups["canary"].url
        assert canary["endpoints"][0]["up"] is True


async def test_status_shows_last_reload_time_and_result(tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as ups:
        async with running_service(tmp_path, split_config(ups)) as (svc, path):
            async with admin(svc) as session:
                before = (await status(session))["config"]["last_reload"]
                assert before["result"] is None and before["time"] is None
                write_config(path, split_config(ups, 50, 50))

                async def reloaded() -> bool:
                    return bool((await status(session))["config"]["generation"] == 2)

                await wait_until(reloaded, 2.0, "reload")
                body = await status(session)
        last = body["config"]["last_reload"]
        assert last["result"] == "success" and last["error"] is None
        assert isinstance(last["time"], float)
        assert body["config"]["reloads"] == {"success": 1, "error": 0}
        weights = body["routes"][0]["versions"]
        assert weights["canary"]["configured_weight"] == 50
        assert weights["canary"]["effective_weight"] == 50


# --------------------------------------------------------------------------- security


async def test_non_loopback_admin_without_token_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPLITPROXY_ADMIN_TOKEN", raising=False)
    path = tmp_path / "config.yaml"
    write_config(path, proxy_config([route({"stable": "http://127.0.0.1:9"})],
                                    admin={"listen": "0.0.0.0:0"}))
    with pytest.raises(ConfigError, match="admin.listen"):
        Service(path)


async def test_proxy_port_never_serves_the_admin_api(tmp_path: Path) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([
            route({"stable": up.url}, name="api", match={"path_prefix": "/api"}),
        ])
        cfg["routes"].append(route({"stable": up.url}, name="shop"))
        # Only /api routed first; everything else reaches the upstream through "shop".
        async with running_service(tmp_path, cfg) as (svc, _):
            async with raw_client(svc.proxy_port) as c:
                for path in ADMIN_PATHS:
                    resp = await c.request("GET", path)
                    assert resp.status == 200
                    assert resp.header("x-served-by") == "stable", path
                    assert resp.text == "stable"
        cfg["routes"] = cfg["routes"][:1]  # now nothing matches the admin paths
        async with running_service(tmp_path, cfg, name="only-api.yaml") as (svc, _):
            for path in ADMIN_PATHS:
                async with raw_client(svc.proxy_port) as c:  # a 404 may close the connection
                    resp = await c.request("GET", path)
                    assert resp.status == 404, (path, resp.status)
                    assert not resp.text.lstrip().startswith("{"), resp.text
                    with pytest.raises(json.JSONDecodeError):
                        json.loads(resp.text)
                    assert "splitproxy_" not in resp.text


async def test_admin_port_is_separate_from_proxy_port(tmp_path: Path) -> None:
    async with run_upstream("stable") as up:
        path = tmp_path / "config.yaml"
        write_config(path, proxy_config([route({"stable": up.url})]))
        async with run_service(path) as svc:
            assert svc.admin_port != svc.proxy_port
            timeout = aiohttp.ClientTimeout(total=WAIT)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                url = f"http://127.0.0.1:{svc.admin_port}/shop"
                async with session.get(url) as resp:
                    assert resp.status == 404  # the admin port proxies nothing
                    assert "X-Served-By" not in resp.headers
