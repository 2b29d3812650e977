"""The demo's built-in upstreams, its config and (once the server exists) the whole demo."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from splitproxy.cli import demo
from tests.support.waiting import wait_until

AiohttpClient = Callable[[web.Application], Awaitable[Any]]


async def test_upstream_answers_with_its_name_in_body_and_header(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(demo.make_upstream_app("stable"))
    resp = await client.get("/")
    assert resp.status == 200
    assert await resp.text() == "served by stable\n"
    assert resp.headers["X-Served-By"] == "stable"
    assert resp.headers["X-Request-Path"] == "/"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
async def test_upstream_answers_every_method_and_path(
    aiohttp_client: AiohttpClient, method: str
) -> None:
    client = await aiohttp_client(demo.make_upstream_app("canary"))
    resp = await client.request(method, "/a/b?x=1", data=b"payload")
    assert resp.status == 200
    assert await resp.text() == "served by canary\n"
    assert resp.headers["X-Served-By"] == "canary"
    assert resp.headers["X-Request-Path"] == "/a/b?x=1"


async def test_upstream_head_has_no_body(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(demo.make_upstream_app("stable"))
    resp = await client.head("/anything")
    assert resp.status == 200
    assert resp.headers["X-Served-By"] == "stable"
    assert await resp.read() == b""


def _endpoint_ports(raw: dict[str, Any]) -> dict[str, set[int]]:
    ports: dict[str, set[int]] = {}
    for route in raw["routes"]:
        for version, cfg in route["versions"].items():
            for url in cfg["endpoints"]:
                ports.setdefault(version, set()).add(int(url.rsplit(":", 1)[1]))
    return ports


def test_embedded_config_points_at_the_demo_upstreams() -> None:
    raw = yaml.safe_load(demo.EMBEDDED_CONFIG)
    assert _endpoint_ports(raw) == {name: {port} for name, port in demo.UPSTREAMS.items()}


def test_repo_demo_config_points_at_the_demo_upstreams() -> None:
    if not demo.DEFAULT_CONFIG.is_file():
        pytest.skip(f"{demo.DEFAULT_CONFIG} does not exist yet")
    raw = yaml.safe_load(demo.DEFAULT_CONFIG.read_text(encoding="utf-8"))
    assert _endpoint_ports(raw) == {name: {port} for name, port in demo.UPSTREAMS.items()}


def test_banner_shows_a_curl_line_for_each_routing_rule() -> None:
    text = demo.banner("127.0.0.1:8080", "splitproxy-demo")
    assert "for i in $(seq 20); do curl -s localhost:8080/; done | sort | uniq -c" in text
    assert "curl -s -H 'X-Splitproxy-Version: canary' localhost:8080/" in text
    assert "curl -s -H 'X-User-Id: alice' localhost:8080/" in text
    assert "-c /tmp/splitproxy-demo.jar -b /tmp/splitproxy-demo.jar" in text


# --- the whole demo, through the proxy --------------------------------------------------------

_HAS_SERVER = importlib.util.find_spec("splitproxy.dataplane.server") is not None
_DEMO_PORTS = (8080, 9901, *demo.UPSTREAMS.values())


def _ports_free(ports: tuple[int, ...]) -> bool:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@pytest.mark.skipif(not _HAS_SERVER, reason="splitproxy.dataplane.server is not written yet")
async def test_demo_splits_pins_and_stops_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not _ports_free(_DEMO_PORTS):
        pytest.skip(f"a demo port {_DEMO_PORTS} is in use on this machine")
    config = tmp_path / "demo.yaml"
    config.write_text(demo.EMBEDDED_CONFIG, encoding="utf-8")
    stop = asyncio.Event()
    task = asyncio.create_task(demo.run_demo(str(config), stop))
    try:
        # No cookie jar: a sticky cookie would turn the weighted split into one version.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            url = "http://127.0.0.1:8080/"

            async def answering() -> bool:
                if task.done():
                    task.result()  # start-up failed: raise its error
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(url) as resp:
                        await resp.read()
                        return True
                return False

            await wait_until(answering, 5, "the demo proxy to answer", interval=0.05)
            assert "X-Splitproxy-Version: canary" in capsys.readouterr().out

            headers = {"X-Splitproxy-Version": "canary"}
            async with session.get(url, headers=headers) as resp:
                assert await resp.text() == "served by canary\n"

            counts: Counter[str] = Counter()
            for _ in range(100):
                async with session.get(url) as resp:
                    counts[resp.headers["X-Served-By"]] += 1
            assert 9 <= counts["canary"] <= 11, counts
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert _ports_free(_DEMO_PORTS)
