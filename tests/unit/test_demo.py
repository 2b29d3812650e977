"""The demo's parts: upstreams with faults set at run time, its config, its banner, and the whole
demo in this process (the user's view, as a subprocess, is tests/rollout/test_demo_user.py)."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from splitproxy.cli import demo
from splitproxy.cli.demoapp import BackgroundLoad, Faults, make_upstream_app
from splitproxy.config.models import load

AiohttpClient = Callable[[web.Application], Awaitable[Any]]


async def test_upstream_answers_with_its_name_in_body_and_header(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(make_upstream_app("stable"))
    resp = await client.get("/")
    assert resp.status == 200
    assert await resp.text() == "served by stable\n"
    assert resp.headers["X-Served-By"] == "stable"
    assert resp.headers["X-Request-Path"] == "/"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
async def test_upstream_answers_every_method_and_path(
    aiohttp_client: AiohttpClient, method: str
) -> None:
    client = await aiohttp_client(make_upstream_app("canary"))
    resp = await client.request(method, "/a/b?x=1", data=b"payload")
    assert resp.status == 200
    assert await resp.text() == "served by canary\n"
    assert resp.headers["X-Served-By"] == "canary"
    assert resp.headers["X-Request-Path"] == "/a/b?x=1"


async def test_upstream_head_has_no_body(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_upstream_app("stable"))
    resp = await client.head("/anything")
    assert resp.status == 200
    assert resp.headers["X-Served-By"] == "stable"
    assert await resp.read() == b""


async def test_a_fault_set_at_run_time_fails_exactly_that_share_and_a_bare_post_heals(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(make_upstream_app("canary"))
    resp = await client.post("/_demo/fault", params={"error_rate": "0.3"})
    assert (resp.status, await resp.text()) == (200, "canary: error_rate 0.3, latency_ms 0\n")
    codes = [(await client.get("/")).status for _ in range(20)]
    assert codes.count(500) == 6, codes  # spread evenly, not drawn at random
    resp = await client.post("/_demo/fault")
    assert await resp.text() == "canary: error_rate 0, latency_ms 0 (healthy)\n"
    assert {(await client.get("/")).status for _ in range(10)} == {200}
    resp = await client.get("/_demo/fault")
    assert "(healthy)" in await resp.text()


async def test_a_latency_fault_slows_every_answer(aiohttp_client: AiohttpClient) -> None:
    faults = Faults()
    client = await aiohttp_client(make_upstream_app("canary", faults))
    await client.post("/_demo/fault", params={"latency_ms": "50"})
    assert faults.latency_ms == 50
    loop = asyncio.get_running_loop()
    start = loop.time()
    resp = await client.get("/")
    assert resp.status == 200 and loop.time() - start >= 0.05


@pytest.mark.parametrize("query", [{"error_rate": "2"}, {"error_rate": "nan"},
                                   {"error_rate": "x"}, {"latency_ms": "-1"}])
async def test_a_bad_fault_is_refused_and_changes_nothing(
    aiohttp_client: AiohttpClient, query: dict[str, str]
) -> None:
    faults = Faults(error_rate=0.1)
    client = await aiohttp_client(make_upstream_app("canary", faults))
    resp = await client.post("/_demo/fault", params=query)
    assert resp.status == 400
    assert "must be a number from 0 to" in await resp.text()
    assert (faults.error_rate, faults.latency_ms) == (0.1, 0)


# --- the config -------------------------------------------------------------------------------


def test_the_embedded_config_is_config_demo_yaml() -> None:
    assert demo.DEFAULT_CONFIG.read_text(encoding="utf-8") == demo.EMBEDDED_CONFIG


def test_the_demo_config_is_a_guarded_canary_rollout_on_the_demo_upstreams() -> None:
    raw = yaml.safe_load(demo.EMBEDDED_CONFIG)
    ports = {v: int(c["endpoints"][0].rsplit(":", 1)[1])
             for v, c in raw["routes"][0]["versions"].items()}
    assert ports == demo.UPSTREAMS
    config = load(demo.DEFAULT_CONFIG)
    (route,) = config.routes
    assert route.analysis is not None and route.analysis.max_error_rate is not None
    assert route.rollout is not None and route.rollout.steps
    assert any(s.pause is not None and s.pause.duration is None for s in route.rollout.steps)
    assert config.state.path is None  # beside the (temporary) copy: every demo starts fresh


def test_with_ports_moves_only_the_demo_addresses() -> None:
    text = "a: 127.0.0.1:9001\nb: http://127.0.0.1:90011\nc: 127.0.0.1:8080\n"
    assert demo.with_ports(text, {9001: 1234, 8080: 0}) == (
        "a: 127.0.0.1:1234\nb: http://127.0.0.1:90011\nc: 127.0.0.1:0\n")


def _banner(admin: int) -> str:
    config = load(demo.DEFAULT_CONFIG)
    addr = demo.Addresses(8080, admin, {"stable": 9001, "canary": 9002})
    return demo.banner(config, addr, Path("/tmp/x/demo.yaml"), 50, ".venv/bin/splitproxy")


def test_the_banner_gives_the_lines_to_watch_break_and_act() -> None:
    text = _banner(9901)
    lines = [line.strip() for line in text.splitlines()]
    assert ".venv/bin/splitproxy status --watch" in lines
    assert "curl -s -X POST 'http://127.0.0.1:9002/_demo/fault?error_rate=0.5'" in lines
    assert "curl -s -X POST 'http://127.0.0.1:9002/_demo/fault'" in lines
    for verb in ("retry", "pause", "resume"):
        assert f".venv/bin/splitproxy {verb} demo" in lines
    assert "dashboard  http://127.0.0.1:9901/dashboard" in lines
    assert "The rollout: canary 25% -> pause 10s -> canary 50% -> pause 10s -> wait for " \
           "promote -> canary 100%." in lines
    assert "waiting for evidence" in text


def test_the_banner_names_the_admin_port_when_it_is_not_the_cli_default() -> None:
    text = _banner(40001)
    assert ".venv/bin/splitproxy status --watch --admin http://127.0.0.1:40001" in text
    assert ".venv/bin/splitproxy retry demo --admin http://127.0.0.1:40001" in text
    assert not re.search(r"splitproxy (status|retry|pause|resume|promote)(?!.*--admin)", text)


# --- the whole demo, in this process ----------------------------------------------------------


async def test_demo_starts_fresh_loads_both_versions_and_stops_cleanly() -> None:
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.create_task(demo.run_demo(demo.EMBEDDED_CONFIG, free_ports=True,
                                             load_rate=50, stop=stop, out=out))
    try:
        for _ in range(200):
            if task.done():
                task.result()  # start-up failed: raise its error
            if "Ctrl-C" in out.getvalue():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no banner within 10 s")
        text = out.getvalue()
        admin = re.search(r"dashboard  (http://127\.0\.0\.1:\d+)/dashboard", text)
        config_path = Path(re.search(r"config     (\S+)", text).group(1))  # type: ignore[union-attr]
        assert admin and config_path.is_file()
        async with aiohttp.ClientSession() as session:
            seen: dict[str, int] = {}
            for _ in range(200):  # the background load reaches the canary at its first step
                async with session.get(admin.group(1) + "/status") as resp:
                    body = await resp.json()
                versions = body["routes"][0]["versions"]
                seen = {v: s["requests_in_window"] for v, s in versions.items()}
                if seen["canary"] > 0 and seen["stable"] > 0:
                    break
                await asyncio.sleep(0.05)
            assert seen["canary"] > 0 and seen["stable"] > 0, seen
            assert body["routes"][0]["rollout"]["phase"] == "progressing"
            assert body["state_store"]["path"] == str(config_path.with_name("demo.state.json"))
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)
    assert not config_path.parent.exists()  # its state went with it


async def test_background_load_sends_requests_and_counts_the_answers(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(make_upstream_app("stable"))
    load_ = BackgroundLoad(str(client.make_url("/")), rate=100)
    load_.start()
    try:
        for _ in range(200):
            if load_.codes.get(200, 0) >= 20:
                break
            await asyncio.sleep(0.02)
    finally:
        await load_.stop()
    assert load_.codes.get(200, 0) >= 20 and load_.failed == 0
    assert set(load_.codes) == {200}
