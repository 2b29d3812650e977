"""For the custom-metrics tests: a test exporter whose numbers the test controls (a real
`prometheus`, the `prometheus` fixture, scrapes it and the proxy).

* `Exporter` / `run_exporter()` — an aiohttp app serving /metrics in Prometheus' text format:
  `app_cpu_share{version}` gauges the test sets (or leaves out), and
  `app_deliveries_total{version,outcome}` counters a background task advances, 20 deliveries
  per version every 50 ms with the share `failing[version]` failed (exactly, with a carry).
* `ramp(exporter, version, start, stop, seconds)` — moves a version's gauge in steps.
* `metric_entry(status, name)` — a custom metric's entry of the guard in /status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DELIVERIES = 20  # per version and beat
BEAT = 0.05


@dataclass
class Exporter:
    cpu: dict[str, float] = field(default_factory=lambda: {"stable": 0.3, "canary": 0.3})
    failing: dict[str, float] = field(default_factory=lambda: {"stable": 0.001,
                                                               "canary": 0.001})
    delivered: dict[tuple[str, str], int] = field(default_factory=dict)
    serve_cpu: set[str] = field(default_factory=lambda: {"stable", "canary"})
    port: int = 0
    scrapes: int = 0
    _carry: dict[str, float] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def text(self) -> str:
        lines = ["# HELP app_cpu_share CPU share of the app, by version",
                 "# TYPE app_cpu_share gauge"]
        lines += [f'app_cpu_share{{version="{v}"}} {x!r}' for v, x in sorted(self.cpu.items())
                  if v in self.serve_cpu]
        lines += ["# HELP app_deliveries_total Deliveries by outcome",
                  "# TYPE app_deliveries_total counter"]
        lines += [f'app_deliveries_total{{version="{v}",outcome="{o}"}} {n}'
                  for (v, o), n in sorted(self.delivered.items())]
        return "\n".join(lines) + "\n"

    def beat(self) -> None:
        for version, share in self.failing.items():
            owed = self._carry.get(version, 0.0) + share * DELIVERIES
            failed = int(owed)
            self._carry[version] = owed - failed
            for outcome, n in (("ok", DELIVERIES - failed), ("failed", failed)):
                key = (version, outcome)
                self.delivered[key] = self.delivered.get(key, 0) + n

    def app(self) -> web.Application:
        async def metrics(request: web.Request) -> web.Response:
            self.scrapes += 1
            return web.Response(text=self.text(), content_type="text/plain", charset="utf-8")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app


@contextlib.asynccontextmanager
async def run_exporter(**kw: Any) -> AsyncIterator[Exporter]:
    exporter = Exporter(**kw)
    exporter.beat()  # every series exists from the first scrape
    runner = web.AppRunner(exporter.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    exporter.port = int(runner.addresses[0][1])

    async def deliver() -> None:
        while True:
            await asyncio.sleep(BEAT)
            exporter.beat()

    task = asyncio.create_task(deliver())
    try:
        yield exporter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()


async def ramp(exporter: Exporter, version: str, start: float, stop: float,
               seconds: float, steps: int = 20) -> None:
    for i in range(steps + 1):
        exporter.cpu[version] = start + (stop - start) * i / steps
        await asyncio.sleep(seconds / steps)


def metric_entry(status: dict[str, Any], name: str, version: str = "canary",
                 against: str | None = None) -> dict[str, Any] | None:
    guard = status["routes"][0]["rollout"]["guard"]
    if not guard:
        return None
    for entry in guard["metrics"]:
        if (entry["name"], entry["version"], entry["against"]) == (name, version, against):
            return dict(entry)
    return None
