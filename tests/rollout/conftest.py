"""Helpers for the rollout engine tests.

* `Backend` / `run_backends(...)` — aiohttp upstreams whose failure mode a test flips at run time
  (`ok`, `fail`, `fail-synthetic`), counting every request they see.
* `FakePrometheus` / `run_fake_prometheus(delay)` — Prometheus' query API answering healthy
  numbers after `delay` seconds, counting queries in flight.
* `Hook` / `run_hook()` — a webhook receiver on 127.0.0.1 that answers a settable status and
  keeps every JSON payload.
* `ManualClock` — a `Clock` the test moves (`await clock.advance(5)`), for the engine alone
  or a whole `Service`.
* `Harness` / `harness` fixture — a `RolloutEngine` over an in-memory store and fake counters
  on a `ManualClock` (`await h.tick(+1.0)` is one second); no sleeping through intervals.
  `h.traffic.serve(version, n, errors=, seconds=)` counts what the data plane would have.
* `rollout_config(...)` — a full config dict for route "shop" with analysis / rollout sections.
* `hit(port, n)` — n GETs, X-Served-By counted; `Load` — steady clients recording every answer
  with its wall-clock send time (comparable with the engine's `aborted_at`).
* `cli(...)` — `python -m splitproxy ...` as a subprocess, without blocking the event loop.

Real services, admin sessions and /metrics parsing come from the control-plane conftest.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from control.conftest import (
    WAIT,
    admin,
    metric,
    proxy_config,
    route,
    run_service,
    running_service,
    scrape,
    status,
    wait_until,
    write_config,
)

from splitproxy.config.models import Config
from splitproxy.control.engine import RolloutEngine
from splitproxy.control.sources.fleet import CountsBoard
from splitproxy.control.sources.measure import MetricSource
from splitproxy.control.stores.store import Loaded, StoreUnavailable, Wanted
from splitproxy.dataplane.stats import VersionStats
from splitproxy.rollout import RouteState
from splitproxy.routing.table import latency_limits

__all__ = [
    "WAIT",
    "Backend",
    "Harness",
    "Hit",
    "FakePrometheus",
    "Hook",
    "Load",
    "ManualClock",
    "MemoryStore",
    "admin",
    "cli",
    "hit",
    "metric",
    "plain",
    "proxy_config",
    "rollout_config",
    "route",
    "run_backends",
    "run_fake_prometheus",
    "run_hook",
    "run_service",
    "running_service",
    "scrape",
    "status",
    "wait_until",
    "write_config",
]

SYNTHETIC = "X-Splitproxy-Synthetic"


# --------------------------------------------------------------------------- upstreams


@dataclass
class Backend:
    """An upstream whose answers a test switches: `mode` is ok, fail (500) or fail-synthetic
    (500 only for requests carrying the synthetic header)."""

    name: str
    mode: str = "ok"
    port: int = 0
    requests: int = 0
    errors: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            self.requests += 1
            failing = self.mode == "fail" or (
                self.mode == "fail-synthetic" and SYNTHETIC in request.headers
            )
            if failing:
                self.errors += 1
            return web.Response(status=500 if failing else 200, text=self.name,
                                headers={"X-Served-By": self.name})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


@contextlib.asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await asyncio.wait_for(runner.cleanup(), WAIT)


@contextlib.asynccontextmanager
async def run_backends(*names: str) -> AsyncIterator[dict[str, Backend]]:
    async with contextlib.AsyncExitStack() as stack:
        backends = {}
        for name in names:
            b = Backend(name)
            b.port = await stack.enter_async_context(_serve(b.app()))
            backends[name] = b
        yield backends


@dataclass
class Hook:
    """A webhook receiver: answers `answer` to every POST and keeps the JSON payloads."""

    answer: int = 200
    port: int = 0
    payloads: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[dict[str, Any]]:
        return [p for p in self.payloads if p["_path"] == path]

    def app(self) -> web.Application:
        async def receive(request: web.Request) -> web.Response:
            body = await request.json()
            self.payloads.append({**body, "_path": request.path})
            return web.Response(status=self.answer, text="ok")

        app = web.Application()
        app.router.add_post("/{tail:.*}", receive)
        return app


@contextlib.asynccontextmanager
async def run_hook() -> AsyncIterator[Hook]:
    hook = Hook()
    async with _serve(hook.app()) as port:
        hook.port = port
        yield hook


@dataclass
class FakePrometheus:
    """Prometheus' query API on 127.0.0.1, answering healthy raw counters for `versions`
    after `delay` seconds (real time): each answer 1000 more requests (code 200) and 1000 more
    timed requests, none failed or slow. Counts queries in flight and answered."""

    delay: float = 1.0
    port: int = 0
    in_flight: int = 0
    answered: int = 0
    held: asyncio.Event | None = None  # when set: no answer until `held` is set
    versions: tuple[str, ...] = ("stable", "canary")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        async def query(request: web.Request) -> web.Response:
            self.in_flight += 1
            try:
                if self.held is not None:
                    await self.held.wait()
                await asyncio.sleep(self.delay)
            finally:
                self.in_flight -= 1
            self.answered += 1
            n = str(1000 * self.answered)
            result = []
            for v in self.versions:
                common = {"route": "shop", "version": v, "instance": "a", "job": "x"}
                result += [
                    {"metric": {"__name__": "splitproxy_requests_total", "code": "200",
                                **common}, "value": [0, n]},
                    {"metric": {"__name__": "splitproxy_upstream_timed_requests_total",
                                **common}, "value": [0, n]},
                ]
            return web.json_response({"status": "success", "data": {
                "resultType": "vector", "result": result}})

        app = web.Application()
        app.router.add_get("/api/v1/query", query)
        return app


@contextlib.asynccontextmanager
async def run_fake_prometheus(delay: float = 1.0) -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus(delay)
    async with _serve(fake.app()) as port:
        fake.port = port
        yield fake


# --------------------------------------------------------------------------- configs


def rollout_config(
    backends: dict[str, Backend] | dict[str, str],
    *,
    weights: dict[str, int] | None = None,
    analysis: dict[str, Any] | None = None,
    rollout: dict[str, Any] | None = None,
    sticky: dict[str, Any] | None = None,
    **route_fields: Any,
) -> dict[str, Any]:
    """Route "shop" over `backends` (or plain URLs; the first listed is the baseline), as a
    full config dict."""
    urls = {n: b.url if isinstance(b, Backend) else b for n, b in backends.items()}
    r = route(urls, weights,
              sticky=sticky or {"pin_header": "X-Splitproxy-Version"})
    if route_fields.get("strategy") == "blue-green":
        del r["weights"]
    if analysis is not None:
        r["analysis"] = analysis
    if rollout is not None:
        r["rollout"] = rollout
    r.update(route_fields)
    return proxy_config([r])


# --------------------------------------------------------------------------- engine harness


class ManualClock:
    """A `Clock` the test moves. `advance(dt)` wakes every sleeper in due order, letting the
    event loop run after each; `jump(dt)` moves time at once and wakes what is due once (a
    machine that was suspended)."""

    def __init__(self, wall: float = 1_717_380_000.0) -> None:  # a Monday, 2024-06-03
        self.wall0 = wall
        self.mono = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._n = 0

    def time(self) -> float:
        return self.wall0 + self.mono

    def monotonic(self) -> float:
        return self.mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._n += 1
        heapq.heappush(self._sleepers, (self.mono + seconds, self._n, fut))
        await fut

    async def advance(self, seconds: float) -> None:
        target = self.mono + seconds
        while self._sleepers and self._sleepers[0][0] <= target + 1e-9:
            due, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue  # a cancelled sleep
            self.mono = max(self.mono, due)
            fut.set_result(None)
            await settle()
        self.mono = max(self.mono, target)
        await settle()

    async def jump(self, seconds: float) -> None:
        self.mono += seconds
        due = [f for t, _, f in self._sleepers if t <= self.mono + 1e-9]
        self._sleepers = [s for s in self._sleepers if s[0] > self.mono + 1e-9]
        heapq.heapify(self._sleepers)
        for fut in due:
            if not fut.done():
                fut.set_result(None)
        await settle()


async def settle(rounds: int = 12) -> None:
    """Lets tasks that are ready run (a few event-loop rounds, no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class MemoryStore:
    """A StateStore in a dict, with the same compare-and-set as the real ones; counts writes
    and fails them while `fail` is set."""

    refresh_interval: float | None = None

    def __init__(self, states: dict[str, RouteState] | None = None) -> None:
        self.states = dict(states or {})
        self.saves = 0
        self.fail = False

    async def open(self, on_change: Callable[[], None]) -> None:
        return None

    async def close(self) -> None:
        return None

    async def load(self, wanted: Mapping[str, Wanted]) -> dict[str, Loaded]:
        out = {}
        for name, want in wanted.items():
            stored = self.states.get(name)
            ok = stored is not None and stored.identity == want.identity
            out[name] = Loaded(stored, None) if ok else Loaded(None, stored)
        return out

    async def fetch(self, identities: Mapping[str, str]) -> dict[str, RouteState]:
        return {n: s for n, s in self.states.items() if identities.get(n) == s.identity}

    async def put(self, route: str, state: RouteState, expected: int) -> RouteState | None:
        if self.fail:
            raise StoreUnavailable("memory store told to fail")
        current = self.states.get(route)
        if current is not None and current.identity == state.identity \
                and current.seq != expected:
            return current
        self.states[route] = state
        self.saves += 1
        return None

    async def retire(self, route: str, identity: str) -> None:
        return None

    def is_leader(self) -> bool:
        return True

    def counts_board(self) -> CountsBoard | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"backend": "memory", "up": not self.fail, "error": None}


class Traffic:
    """Cumulative per-version counters, as the data plane keeps them: `seconds` is both what
    the client saw and the upstream time, counted against the route's latency limits."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str, bool], VersionStats] = {}
        self.limits: tuple[float, ...] = ()

    def serve(self, version: str, requests: int, *, errors: int = 0, seconds: float = 0.005,
              synthetic: bool = False, route: str = "shop") -> None:
        key = (route, version, synthetic)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = VersionStats(route, version, synthetic)
            stats.set_limits(self.limits)
        for i in range(requests):
            stats.observe(500 if i < errors else 200, seconds, seconds)

    def counters(self) -> list[VersionStats]:
        return list(self._stats.values())


class Harness:
    """A RolloutEngine on a `ManualClock`: `await h.tick(dt)` moves time by `dt` (every timer
    tick, measurement and event in between runs). Weights it would install are
    `installed[-1]`."""

    def __init__(self, store: MemoryStore | None = None,
                 sources: dict[str, MetricSource] | None = None,
                 clock: ManualClock | None = None) -> None:
        self.store = store or MemoryStore()
        self.clock = clock or ManualClock()
        self.traffic = Traffic()
        self.installed: list[dict[str, dict[str, int]]] = []
        self.engine = RolloutEngine(self.store, self.traffic.counters, self._rebuild,
                                    self.clock, sources)

    def _rebuild(self) -> None:
        self.installed.append(self.engine.weights())

    @property
    def wall(self) -> float:
        return self.clock.time()

    async def start(self, config: Config) -> None:
        self.traffic.limits = latency_limits(config.routes[0])
        await self.engine.start(config)
        await self.settled()

    async def settled(self) -> None:
        """Until the engine has nothing left to do at this moment."""
        for _ in range(200):
            await settle(4)
            if self.engine._queue.empty() and not self.engine.readings.busy:
                return
        raise AssertionError("the engine did not settle")

    async def tick(self, dt: float = 0.0) -> None:
        await self.clock.advance(dt)
        await self.settled()

    async def act(self, action: str, **kw: Any) -> RouteState:
        state = await self.engine.act("shop", action, **kw)
        await self.settled()
        return state

    async def tick_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Real time passes, the engine's clock does not: waits for webhook answers (real
        I/O) and what the engine does with them."""

        async def ticked() -> bool:
            await self.settled()
            return predicate()

        await wait_until(ticked, what=what)

    def weights(self, name: str = "shop") -> dict[str, int]:
        return self.engine.weights()[name]

    def state(self, name: str = "shop") -> RouteState:
        return self.engine.states[name]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        await h.engine.stop()


# --------------------------------------------------------------------------- clients


async def hit(port: int, n: int = 1, headers: dict[str, str] | None = None) -> Counter[str]:
    """`n` sequential GETs through the proxy on one keep-alive connection, without a cookie
    jar; counts X-Served-By (with the status when it is not 200: "canary 500")."""
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        for _ in range(n):
            async with session.get(f"http://127.0.0.1:{port}/", headers=headers) as resp:
                await resp.read()
                by = resp.headers.get("X-Served-By", "?")
                seen[by if resp.status == 200 else f"{by} {resp.status}"] += 1
    return seen


@dataclass(frozen=True)
class Hit:
    kind: str  # which client loop sent it
    key: str  # the user id, cookie or pin it carried ("" for none)
    sent: float  # wall clock, as the engine's `aborted_at`
    done: float
    status: int
    served_by: str


Headers = Callable[[int], tuple[str, dict[str, str]]]  # iteration -> (key, headers)


class Load:
    """Steady clients through the proxy: one task per `kinds` entry, each looping GETs on its
    own keep-alive connection (no cookie jar: a test sends the cookies it means)."""

    def __init__(self, port: int, kinds: Mapping[str, Headers], gap: float = 0.004) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.kinds = kinds
        self.gap = gap
        self.hits: list[Hit] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()

    async def _loop(self, kind: str, headers: Headers) -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                         timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
            i = 0
            while not self._stop.is_set():
                key, hdrs = headers(i)
                i += 1
                sent = time.time()
                try:
                    async with session.get(self.url, headers=hdrs) as resp:
                        await resp.read()
                        self.hits.append(Hit(kind, key, sent, time.time(), resp.status,
                                             resp.headers.get("X-Served-By", "?")))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.failures.append(f"{kind}: {exc!r}")
                await asyncio.sleep(self.gap)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        tasks = [asyncio.create_task(self._loop(k, h)) for k, h in self.kinds.items()]
        try:
            yield self
        finally:
            self._stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

    def since(self, wall: float) -> list[Hit]:
        return [h for h in self.hits if h.sent > wall]


def plain(i: int) -> tuple[str, dict[str, str]]:
    return "", {}


# --------------------------------------------------------------------------- CLI


@dataclass
class Run:
    code: int
    out: str
    err: str


async def cli(*args: str, timeout: float = 20.0, env: Mapping[str, str] | None = None) -> Run:
    """`python -m splitproxy ARGS` in a subprocess (`env`: its whole environment); the event
    loop keeps serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "splitproxy", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
