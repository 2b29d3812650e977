"""A whole splitproxy under test: a real `Service` (proxy, admin API, file watcher) started from
a real config file, its admin API and its /metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from splitproxy.control.clock import SYSTEM, Clock
from splitproxy.control.service import Service

from .waiting import WAIT

# Long enough for the watcher's thread to register its inotify watch after `start()`.
WATCH_SETTLE = 0.2


def write_config(path: Path, cfg: Mapping[str, Any]) -> None:
    """The config as YAML, written in place (the same inode), as `echo > file` would."""
    path.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))


@contextlib.asynccontextmanager
async def run_service(
    path: Path, *, watch: bool = True, clock: Clock = SYSTEM, workers: int = 1,
    start_wait: float = WAIT, stop_wait: float = WAIT + 5,
) -> AsyncIterator[Service]:
    """A started `Service` for the config file at `path` (rollouts on `clock`, `workers`
    data-plane processes); stopped (drain 1 s) on exit, unless the test already stopped it.
    Start and stop are bounded by `start_wait` and `stop_wait` seconds: spawning worker
    processes takes longer than starting one in this process."""
    svc = Service(path, watch=watch, clock=clock, workers=workers)
    await asyncio.wait_for(svc.start(), start_wait)
    if watch:
        await asyncio.sleep(WATCH_SETTLE)
    try:
        yield svc
    finally:
        if not svc.proxy.draining:  # a test may have stopped it itself
            await asyncio.wait_for(svc.stop(drain=1.0), stop_wait)


@contextlib.asynccontextmanager
async def running_service(
    tmp_path: Path, cfg: Mapping[str, Any], *, name: str = "config.yaml", watch: bool = True,
    workers: int = 1, start_wait: float = WAIT, stop_wait: float = WAIT + 5,
) -> AsyncIterator[tuple[Service, Path]]:
    """Writes `cfg` to `tmp_path/name` and yields a started Service with the file's path (the
    other arguments as `run_service`'s)."""
    path = tmp_path / name
    write_config(path, cfg)
    async with run_service(path, watch=watch, workers=workers, start_wait=start_wait,
                           stop_wait=stop_wait) as svc:
        yield svc, path


def generation(svc: Service) -> int:
    """The config generation the service serves (1 at start, +1 per applied change)."""
    return int(svc.controller.status().config.generation)


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




class Reloads:
    """From now on, watches a service's config reloads: `events` counts the batches of changes
    its watcher handed over, and `idle()` is true once a reload that started after the last of
    them has finished. Where a test means to show that a change was ignored, this is the
    positive signal that it was seen and handled."""

    def __init__(self, svc: Service) -> None:
        self.events = 0
        self._handled = 0  # events that a finished reload started after
        controller = svc.controller
        on_change, reload_async = controller.watcher.on_change, controller.reload_async

        def counted() -> None:
            self.events += 1
            on_change()

        async def reload(force: bool = False) -> bool:
            started = self.events
            try:
                return await reload_async(force)
            finally:
                self._handled = max(self._handled, started)

        controller.watcher.on_change = counted
        controller.reload_async = reload  # type: ignore[method-assign]

    def idle(self) -> bool:
        return self._handled == self.events
