"""Shared helpers for the control-plane tests: a real `Service` started from a real file.

* `write_config(path, cfg)` — writes a config dict as YAML, in place (open, truncate, write).
* `running_service(tmp_path, cfg)` — writes the file, starts a `Service` (proxy, admin API,
  watcher) and stops it on exit.
* `admin(svc)` — an aiohttp session bound to the admin port; `scrape(svc)` — /metrics parsed
  with prometheus-client's parser; `metric(...)` — one sample's value.
* `wait_until(...)` — polls a sync or async predicate with a deadline.

The data-plane helpers (upstreams, raw client, config builders) come from the integration
suite's conftest and are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from integration.conftest import (
    WAIT,
    RawClient,
    Upstream,
    proxy_config,
    raw_client,
    read_request,
    refused_port,
    route,
    run_raw_upstream,
    run_upstream,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from splitproxy.control.clock import SYSTEM, Clock
from splitproxy.control.service import Service

__all__ = [
    "WAIT",
    "RawClient",
    "Upstream",
    "admin",
    "metric",
    "proxy_config",
    "raw_client",
    "read_request",
    "refused_port",
    "route",
    "run_raw_upstream",
    "run_service",
    "run_upstream",
    "running_service",
    "scrape",
    "served_by",
    "status",
    "upstreams",
    "wait_until",
    "write_config",
]

# Long enough for the watcher's thread to register its inotify watch after `start()`.
WATCH_SETTLE = 0.2


def write_config(path: Path, cfg: Mapping[str, Any]) -> None:
    """The config as YAML, written in place (the same inode), as `echo > file` would."""
    path.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = WAIT,
    what: str = "condition",
    interval: float = 0.01,
) -> float:
    """Polls `predicate` (sync or async) until true; returns the seconds it took.

    Fails the test after `timeout`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def run_service(
    path: Path, *, watch: bool = True, clock: Clock = SYSTEM
) -> AsyncIterator[Service]:
    """A started `Service` for the config file at `path` (rollouts on `clock`); stopped
    (drain 1 s) on exit, unless the test already stopped it."""
    svc = Service(path, watch=watch, clock=clock)
    await asyncio.wait_for(svc.start(), WAIT)
    if watch:
        await asyncio.sleep(WATCH_SETTLE)
    try:
        yield svc
    finally:
        if not svc.proxy.draining:  # a test may have stopped it itself
            await asyncio.wait_for(svc.stop(drain=1.0), WAIT + 5)


@contextlib.asynccontextmanager
async def running_service(
    tmp_path: Path, cfg: Mapping[str, Any], *, name: str = "config.yaml", watch: bool = True
) -> AsyncIterator[tuple[Service, Path]]:
    """Writes `cfg` to `tmp_path/name` and yields a started Service with the file's path."""
    path = tmp_path / name
    write_config(path, cfg)
    async with run_service(path, watch=watch) as svc:
        yield svc, path


@contextlib.asynccontextmanager
async def upstreams(*names: str) -> AsyncIterator[dict[str, Upstream]]:
    """Several aiohttp upstreams at once, by name."""
    async with contextlib.AsyncExitStack() as stack:
        yield {n: await stack.enter_async_context(run_upstream(n)) for n in names}


@contextlib.asynccontextmanager
async def admin(svc: Service, token: str | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session whose relative URLs go to the admin port (with a bearer token), and
    with the header that marks its POSTs as actions (not a cross-site form), as the CLI's."""
    headers = {"X-Splitproxy-Action": "1"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession(
        base_url=f"http://127.0.0.1:{svc.admin_port}",
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=WAIT),
    ) as session:
        yield session


async def status(session: aiohttp.ClientSession) -> dict[str, Any]:
    """GET /status, which must be 200 JSON."""
    async with session.get("/status") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        body: dict[str, Any] = await resp.json()
        return body


async def scrape(session: aiohttp.ClientSession) -> list[Sample]:
    """GET /metrics, parsed by prometheus-client: every sample of every family."""
    async with session.get("/metrics") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def metric(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The value of the one sample called `name` whose labels include `labels`; None if none."""
    found = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) <= 1, f"{len(found)} samples {name}{labels}"
    return found[0] if found else None


async def served_by(c: RawClient, n: int, target: str = "/") -> Counter[str]:
    """`n` sequential GETs on one keep-alive connection through the proxy; X-Served-By counts."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        resp = await c.request("GET", target)
        assert resp.status == 200, resp.text
        seen[resp.header("x-served-by") or "?"] += 1
    return seen
