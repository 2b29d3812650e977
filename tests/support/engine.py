"""The rollout engine alone, without sleeping through intervals: a `ManualClock` the test
moves, an in-memory state store, fake data-plane counters, and a `Harness` that ties them to a
`RolloutEngine` (`await h.tick(+1.0)` is one second)."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Mapping
from typing import Any

from splitproxy.config.guard import Source
from splitproxy.config.models import Config
from splitproxy.control.engine import RolloutEngine
from splitproxy.control.sources.fleet import CountsBoard
from splitproxy.control.sources.measure import MetricSource
from splitproxy.control.stores.store import Loaded, StoreUnavailable, Wanted
from splitproxy.dataplane.stats import VersionStats
from splitproxy.rollout import Action, RouteState
from splitproxy.routing.table import latency_limits

from .waiting import wait_until


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
                 sources: dict[Source, MetricSource] | None = None,
                 clock: ManualClock | None = None) -> None:
        self.store = store or MemoryStore()
        self.clock = clock or ManualClock()
        self.traffic = Traffic()
        self.installed: list[dict[str, dict[str, float]]] = []
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

    async def act(self, action: Action | str, **kw: Any) -> RouteState:
        state = await self.engine.act("shop", Action(action), **kw)
        await self.settled()
        return state

    async def tick_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Real time passes, the engine's clock does not: waits for webhook answers (real
        I/O) and what the engine does with them."""

        async def ticked() -> bool:
            await self.settled()
            return predicate()

        await wait_until(ticked, what=what)

    async def webhooks_answered(self) -> None:
        """Until every webhook call the engine made has had its answer (real I/O)."""
        webhooks = self.engine.webhooks
        await wait_until(lambda: not webhooks._tasks, what="the webhooks' answers")

    def weights(self, name: str = "shop") -> dict[str, float]:
        return self.engine.weights()[name]

    def state(self, name: str = "shop") -> RouteState:
        return self.engine.states[name]
