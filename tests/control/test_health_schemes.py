"""An http:// and an https:// endpoint on the same host:port are two endpoints: each has its
own passive and active health, its own row in /status, its own metric series, and workers'
reports merge them apart. Here the https one fails every handshake (the port speaks only
cleartext HTTP), the http one answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from splitproxy.control.service import Service
from tests.support.configs import proxy_config, route
from tests.support.ports import free_port
from tests.support.rawhttp import get
from tests.support.service import admin, metric, scrape, status, write_config
from tests.support.upstream import run_upstream
from tests.support.waiting import wait_until

CHECK = {"path": "/", "interval": "50ms", "timeout": "2s", "healthy_threshold": 1,
         "unhealthy_threshold": 2}


def both_schemes(port: int, upstream_port: int, *, check: bool,
                 **health: Any) -> dict[str, Any]:
    r = route({"stable": [f"http://127.0.0.1:{upstream_port}",
                          f"https://127.0.0.1:{upstream_port}"]})
    r["versions"]["stable"]["tls"] = {"verify": False}
    if check:
        r["versions"]["stable"]["health_check"] = CHECK
    return proxy_config([r], listen=f"127.0.0.1:{port}", health=health)


@asynccontextmanager
async def service(tmp_path: Path, cfg: dict[str, Any], workers: int) -> AsyncIterator[Service]:
    path = tmp_path / "config.yaml"
    write_config(path, cfg)
    svc = Service(path, watch=False, workers=workers)
    await asyncio.wait_for(svc.start(), 60)
    try:
        yield svc
    finally:
        await svc.stop(drain=1.0)


async def rows(session: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
    endpoints = (await status(session))["routes"][0]["versions"]["stable"]["endpoints"]
    return {e["url"]: e for e in endpoints}


async def test_passive_health_ejects_the_https_endpoint_only(tmp_path: Path) -> None:
    port = free_port()
    async with run_upstream("stable") as up:
        cfg = both_schemes(port, up.port, check=False, consecutive_failures=2,
                           base_ejection="30s", max_ejection="60s", min_healthy=1)
        async with service(tmp_path, cfg, 1) as svc, admin(svc) as session:
            plain, secure = f"http://127.0.0.1:{up.port}", f"https://127.0.0.1:{up.port}"

            async def ejected() -> bool:
                await get(port, "/")
                return bool((await rows(session)).get(secure, {}).get("passive") == "ejected")

            await wait_until(ejected, what="the https endpoint ejected")
            shown = await rows(session)
            served = up.requests
            statuses = [(await get(port, "/")).status for _ in range(10)]
            samples = await scrape(session)
    assert sorted(shown) == [plain, secure]
    assert (shown[plain]["passive"], shown[plain]["up"]) == ("up", True)
    assert (shown[secure]["up"], shown[secure]["ejections"]) == (False, 1)
    assert statuses == [200] * 10 and up.requests == served + 10
    key = f"127.0.0.1:{up.port}"
    assert metric(samples, "splitproxy_endpoint_up", endpoint=key) == 1
    assert metric(samples, "splitproxy_endpoint_up", endpoint=f"https://{key}") == 0
    assert metric(samples, "splitproxy_upstream_errors_total", kind="tls") == 2


@pytest.mark.parametrize("workers", [1, 2])
async def test_active_checks_of_the_two_schemes_stay_apart(tmp_path: Path, workers: int) -> None:
    port = free_port()
    async with run_upstream("stable") as up:
        cfg = both_schemes(port, up.port, check=True, consecutive_failures=1000)
        async with service(tmp_path, cfg, workers) as svc, admin(svc) as session:
            plain, secure = f"http://127.0.0.1:{up.port}", f"https://127.0.0.1:{up.port}"

            async def checked() -> bool:
                # With workers, /status lists endpoints once a worker has reported its health
                # (every 0.25 s): until then there are no rows to look at.
                shown = await rows(session)
                return bool(secure in shown and plain in shown
                            and shown[secure]["active"] == "down"
                            and shown[plain]["active_last_result"] == "success")

            await wait_until(checked, 10, "the https endpoint down, the http one up")
            shown = await rows(session)
            statuses = [(await get(port, "/")).status for _ in range(10)]
            samples = await scrape(session)
    assert len(shown) == 2
    assert (shown[plain]["up"], shown[plain]["active"]) == (True, "up")
    assert shown[secure]["up"] is False
    assert "SSL" in (shown[secure]["active_last_error"] or ""), shown[secure]
    assert statuses == [200] * 10
    key = f"127.0.0.1:{up.port}"
    assert metric(samples, "splitproxy_endpoint_healthy", endpoint=key, check="active") == 1
    assert metric(samples, "splitproxy_endpoint_healthy", endpoint=f"https://{key}",
                  check="active") == 0
