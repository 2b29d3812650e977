"""The demo's moving parts: upstreams whose faults are set at run time, and a light steady
load through the proxy so that the guard has evidence to judge.

The upstreams are aiohttp applications (they are not on the proxied hot path, so aiohttp is
the right tool). `POST /_demo/fault?error_rate=0.3&latency_ms=400` on an upstream sets its
faults (both default to 0: a POST without parameters heals it); `GET /_demo/fault` shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass

import aiohttp
from aiohttp import web

log = logging.getLogger("splitproxy.cli.demo")

FAULT_PATH = "/_demo/fault"
MAX_LATENCY_MS = 30_000.0


@dataclass
class Faults:
    """What an upstream does wrong. Errors are spread evenly, not drawn at random: at 0.3,
    3 requests in every 10 fail, so what the guard sees is what was asked for."""

    error_rate: float = 0.0
    latency_ms: float = 0.0
    _due: float = 0.0

    def fails_next(self) -> bool:
        self._due += self.error_rate
        if self._due >= 1.0 - 1e-9:  # 0.1 ten times is not quite 1.0 in floating point
            self._due -= 1.0
            return True
        return False

    def describe(self, name: str) -> str:
        return (f"{name}: error_rate {self.error_rate:g}, latency_ms {self.latency_ms:g}"
                + (" (healthy)" if not (self.error_rate or self.latency_ms) else ""))


def _number(request: web.Request, key: str, high: float) -> float:
    raw = request.query.get(key, "0")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= high:  # also NaN
        raise web.HTTPBadRequest(text=f"{key} must be a number from 0 to {high:g}, "
                                      f"got {raw!r}\n")
    return value


def make_upstream_app(name: str, faults: Faults | None = None) -> web.Application:
    """An upstream that answers every method and path with `served by <name>`, failing or
    slowing down as its `faults` say (set by `POST /_demo/fault`)."""
    faults = faults if faults is not None else Faults()

    async def fault(request: web.Request) -> web.Response:
        if request.method == "POST":
            error_rate = _number(request, "error_rate", 1.0)
            latency_ms = _number(request, "latency_ms", MAX_LATENCY_MS)
            faults.error_rate, faults.latency_ms, faults._due = error_rate, latency_ms, 0.0
            log.info("demo upstream %s", faults.describe(name))
        return web.Response(text=faults.describe(name) + "\n")

    async def handle(request: web.Request) -> web.Response:
        # Drain the body so a keep-alive connection stays clean for the next request.
        await request.read()
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        headers = {"X-Served-By": name, "X-Request-Path": request.path_qs}
        if faults.fails_next():
            return web.Response(status=500, text=f"{name} failed (demo fault)\n",
                                headers=headers)
        return web.Response(text=f"served by {name}\n", headers=headers)

    app = web.Application()
    app.router.add_route("GET", FAULT_PATH, fault)
    app.router.add_route("POST", FAULT_PATH, fault)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def start_upstream(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `app` on host:port (0: any free port); the caller cleans the runner up."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


class BackgroundLoad:
    """`rate` GETs a second to `url`, on a fixed schedule, at most `MAX_IN_FLIGHT` at once
    (a slow canary does not pile requests up). No cookies, no user id: the split is by
    weight. Answers are counted, never printed."""

    MAX_IN_FLIGHT = 64

    def __init__(self, url: str, rate: float) -> None:
        self.url = url
        self.rate = rate
        self.sent = 0
        self.codes: dict[int, int] = {}
        self.failed = 0  # no answer at all (connection refused, timeout)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.rate > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=10)
        in_flight: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                         timeout=timeout) as session:
            try:
                due = loop.time()
                while True:
                    if len(in_flight) < self.MAX_IN_FLIGHT:
                        task = loop.create_task(self._one(session))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                    # A fixed grid: a late wake-up does not slow the rate down.
                    due = max(due + 1 / self.rate, loop.time() - 1.0)
                    await asyncio.sleep(max(0.0, due - loop.time()))
            finally:
                for task in list(in_flight):
                    task.cancel()
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _one(self, session: aiohttp.ClientSession) -> None:
        self.sent += 1
        try:
            async with session.get(self.url) as resp:
                await resp.read()
                self.codes[resp.status] = self.codes.get(resp.status, 0) + 1
        except (aiohttp.ClientError, TimeoutError):
            self.failed += 1
