"""The rollout engine: the one place that both decides and acts on rollouts.

Every tick it folds analysis checks and due steps into each route's `RouteState` (pure
functions in `rollout` and `analysis`), then acts: persists the state, swaps in a routing
table with the new weights, logs, counts and calls webhooks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from splitproxy import rollout
from splitproxy.analysis import QUANTILES, Check, inconclusive, judge
from splitproxy.config import Config, Route
from splitproxy.promsource import PrometheusSource, PromSample
from splitproxy.redis_store import SYNC_INTERVAL, RedisStore
from splitproxy.rollout import ABORTED, RouteState
from splitproxy.store import StateStore
from splitproxy.webhooks import Webhooks
from splitproxy.window import Sample, Window

log = logging.getLogger("splitproxy.rollout")

TICK = 0.1  # seconds between looks at due checks and steps
GATE_RETRY = 2.0  # a pre-step webhook that said no is asked again after this long


class RolloutEngine:
    def __init__(
        self,
        store: StateStore,
        window: Window,
        sample: Callable[[float], None],
        rebuild: Callable[[], None],
    ) -> None:
        self.store = store
        self.window = window
        self.sample = sample  # records a window sample "now" (monotonic)
        self.rebuild = rebuild  # swaps in a routing table made from `weights()`
        self.config: Config | None = None
        self.states: dict[str, RouteState] = {}
        self.aborts: dict[str, int] = {}
        self.checks_total: dict[tuple[str, str], int] = {}
        self.webhooks = Webhooks()
        self.prometheus = PrometheusSource()
        self.queries: dict[str, dict[str, Any]] = {}  # route -> last PromQL and its error
        self._epoch: dict[str, float] = {}  # monotonic start of what analysis may look at
        self._next_check: dict[str, float] = {}
        self._gates: dict[str, asyncio.Task[tuple[bool, str]]] = {}
        self._gate_hold: dict[str, tuple[float, str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._dirty = False
        # A shared store (Redis): decisions are compare-and-set writes, pulled by every replica.
        self.shared: RedisStore | None = store if isinstance(store, RedisStore) else None
        self._unpushed: dict[str, int] = {}  # route -> the stored seq our decision builds on
        self._pull_at = 0.0

    # -- life cycle -------------------------------------------------------------------------
    async def start(self, config: Config) -> None:
        now, mono = time.time(), asyncio.get_running_loop().time()
        if self.shared is not None:
            await self.shared.start(self._remote_changed)
            revisions = {r.name: rollout.revision_of(r) for r in config.routes}
            stored = await self.shared.get(revisions) or {}
        else:
            stored = await self.store.load()
        self.config = config
        for route in config.routes:
            state = stored.get(route.name)
            if state is None or state.revision != rollout.revision_of(route):
                state = rollout.start(route, now)
                self._unpushed[route.name] = -1  # publish it: nothing stored for this revision
            elif state.phase == ABORTED:
                log.warning("route %s stays aborted after restart: %s", route.name,
                            state.abort_reason)
            self.states[route.name] = state
            self._epoch[route.name] = mono
        if self.shared is not None:
            await self._sync(mono, pull=False)
        else:
            await self.store.save(self.states)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.shared is not None:
            await self.shared.stop()
        for gate in self._gates.values():
            gate.cancel()
        await self.webhooks.close()
        await self.prometheus.close()

    def weights(self) -> dict[str, dict[str, int]]:
        assert self.config is not None
        return {r.name: rollout.weights(self.states[r.name], r) for r in self.config.routes}

    def reconfigure(self, new: Config) -> None:
        """A reloaded config: a route whose versions, weights, steps or revision changed starts
        a new rollout (clearing an abort); other edits keep the current step."""
        old_weights = self.weights() if self.config is not None else {}
        now, mono = time.time(), asyncio.get_running_loop().time()
        states: dict[str, RouteState] = {}
        for route in new.routes:
            state = self.states.get(route.name)
            if state is None or state.revision != rollout.revision_of(route):
                serving = _serving(old_weights.get(route.name, {}))
                state = rollout.start(route, now, serving=serving)
                self._epoch[route.name] = mono
                self.sample(mono)
                self._gates.pop(route.name, None)
                self._gate_hold.pop(route.name, None)
                self._unpushed[route.name] = -1  # adopted instead if another replica was first
                self._pull_at = 0.0
                log.info("rollout route=%s new revision %s: phase=%s", route.name,
                         state.revision, state.phase)
            states[route.name] = state
        self.states = states
        self.config = new
        self._dirty = True

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            try:
                await self.tick(loop.time(), time.time())
            except Exception:  # a bug here must not stop the guard for good
                log.exception("rollout tick failed")

    async def tick(self, mono: float, now: float) -> None:
        config = self.config
        assert config is not None
        before = self.weights()
        for route in config.routes:
            state = self.states[route.name]
            new = state
            if route.analysis is not None and mono >= self._next_check.get(route.name, 0.0):
                self._next_check[route.name] = mono + route.analysis.interval
                check = await self.check(route, new, mono, now)
                if check is not None:
                    key = (route.name, check.result)
                    self.checks_total[key] = self.checks_total.get(key, 0) + 1
                    new, events = rollout.record_check(new, check, route.analysis, route, now)
                    self._log(route, events)
            # With a shared store only the lease holder runs the step timers.
            leads = self.shared is None or self.shared.is_leader(mono)
            if route.rollout is not None and new.phase != ABORTED and leads:
                allowed = self._weight_steps_allowed(route, new, mono)
                new, events = rollout.advance(new, route, now, weight_steps=allowed)
                self._log(route, events)
            if new != state:
                self._transition(route, state, new)
        if self.shared is not None:
            await self._sync(mono, pull=mono >= self._pull_at)
        if self._dirty or self.weights() != before:
            self._dirty = False
            self.rebuild()
            if self.shared is None:
                await self.store.save(self.states)

    # -- shared state -----------------------------------------------------------------------
    def _remote_changed(self) -> None:
        self._pull_at = 0.0  # a replica wrote: pull at the next tick

    async def _sync(self, mono: float, pull: bool) -> None:
        """Push our decisions (compare-and-set), then pull newer ones made elsewhere."""
        store = self.shared
        assert store is not None and self.config is not None
        for name, expected in list(self._unpushed.items()):
            state = self.states.get(name)
            if state is None:
                del self._unpushed[name]
                continue
            try:
                winner = await store.put(name, state, expected)
            except ConnectionError:
                return  # unreachable: keep serving our state, push again after the backoff
            del self._unpushed[name]
            if winner is not None:
                self._adopt(name, winner, lost_race=True)
        if not pull:
            return
        self._pull_at = mono + SYNC_INTERVAL
        remote = await store.get({n: s.revision for n, s in self.states.items()})
        for name, theirs in (remote or {}).items():
            if theirs.seq > self.states[name].seq and name not in self._unpushed:
                self._adopt(name, theirs, lost_race=False)

    def _adopt(self, name: str, theirs: RouteState, lost_race: bool) -> None:
        """Take another replica's decision; our own check counters stay ours.

        `lost_race`: our own write lost the compare-and-set to `theirs`. Otherwise `theirs`
        was written on top of what we stored (a later decision, such as a retry)."""
        mine = self.states[name]
        if lost_race and mine.phase == ABORTED and theirs.phase != ABORTED:
            # Our abort lost a race with another write: an abort is never lost, re-apply it.
            new = rollout.abort(theirs, mine.abort_reason or "aborted", mine.aborted_at or 0)
            self.states[name] = replace(new, seq=theirs.seq + 1, checks=mine.checks)
            self._unpushed[name] = theirs.seq
            self._dirty = True
            return
        new = replace(theirs, failures=mine.failures, inconclusive=mine.inconclusive,
                      checks=mine.checks)
        if new.phase != mine.phase:
            log.info("rollout route=%s phase=%s->%s (decided by another replica) reason=%s",
                     name, mine.phase, new.phase, new.abort_reason or new.pause_reason or "-")
            if new.phase == ABORTED:
                self.aborts[name] = self.aborts.get(name, 0) + 1
        self.states[name] = new
        self._dirty = True

    async def check(
        self, route: Route, state: RouteState, mono: float, now: float
    ) -> Check | None:
        """One analysis check of the route's canary (blue-green: the active color)."""
        analysis = route.analysis
        assert analysis is not None
        if state.phase == ABORTED:
            return None
        if route.strategy == "blue-green":
            version = rollout.effective_active(state, route) or route.baseline
            baseline = state.previous_active
        else:
            version = route.canary or route.baseline
            baseline = route.baseline if version != route.baseline else None
        seconds = min(analysis.window, mono - self._epoch.get(route.name, 0.0))
        if analysis.source == "prometheus":
            return await self._check_prometheus(route, version, baseline, seconds, now)
        self.sample(mono)
        delta = self.window.delta(mono, seconds)

        def of(v: str) -> Sample:
            sample = delta.get((route.name, v, False), Sample())
            if analysis.include_synthetic:
                sample = sample + delta.get((route.name, v, True), Sample())
            return sample

        return judge(analysis, version, of(version), of(baseline) if baseline else None, now)

    async def _check_prometheus(self, route: Route, version: str, baseline: str | None,
                                seconds: float, now: float) -> Check:
        analysis = route.analysis
        assert analysis is not None
        shown: dict[str, dict[str, str]] = {}
        measured: list[PromSample | None] = []
        for v in (version, baseline):
            if v is None:
                measured.append(None)
                continue
            sample, queries, error = await self.prometheus.measure(
                analysis.prometheus_url, route.name, v, seconds, list(QUANTILES),
                analysis.include_synthetic)
            shown[v] = queries
            if error is not None:
                self.queries[route.name] = {"queries": shown, "error": error}
                log.warning("rollout route=%s analysis inconclusive: %s", route.name, error)
                return inconclusive(analysis, version, now, error)
            measured.append(sample)
        self.queries[route.name] = {"queries": shown, "error": None}
        canary, base = measured
        assert canary is not None
        return judge(analysis, version, canary, base, now)

    def _weight_steps_allowed(self, route: Route, state: RouteState, mono: float) -> int | None:
        """Pre-step webhooks: every step that changes weights waits for all hooks' 2xx, so
        `advance` may take at most one such step per gate (None: no hooks, no limit)."""
        assert route.rollout is not None
        hooks = [h for h in route.rollout.webhooks if h.on == "pre-step"]
        if not hooks:
            return None
        if not rollout.next_step_is_weight(state, route):
            return 0  # pauses may run out; the weight step after them asks next tick
        hold = self._gate_hold.get(route.name)
        if hold is not None and mono < hold[0]:
            return 0
        gate = self._gates.get(route.name)
        if gate is None:
            payload = self._payload(route, state, "pre-step")
            self._gates[route.name] = asyncio.get_running_loop().create_task(
                self._all_ok(hooks, payload))
            return 0
        if not gate.done():
            return 0
        del self._gates[route.name]
        ok, detail = gate.result()
        if ok:
            self._gate_hold.pop(route.name, None)
            return 1
        log.warning("rollout route=%s step %d held by pre-step webhook: %s", route.name,
                    state.step + 1, detail)
        self._gate_hold[route.name] = (mono + GATE_RETRY, detail)
        return 0

    async def _all_ok(self, hooks: list[Any], payload: dict[str, Any]) -> tuple[bool, str]:
        results = await asyncio.gather(*(self.webhooks.call(h, payload) for h in hooks))
        bad = [detail for ok, detail in results if not ok]
        return (not bad, "; ".join(bad) or "ok")

    def _transition(self, route: Route, old: RouteState, new: RouteState) -> None:
        if self.shared is not None and rollout.decision(new) != rollout.decision(old):
            new = replace(new, seq=old.seq + 1)
            self._unpushed.setdefault(route.name, old.seq)
        self.states[route.name] = new
        self._dirty = True
        if new.phase == old.phase:
            return
        log.info("rollout route=%s phase=%s->%s step=%d weight=%s reason=%s", route.name,
                 old.phase, new.phase, new.step, new.weight,
                 new.abort_reason or new.pause_reason or "-")
        if new.phase == ABORTED:
            self.aborts[route.name] = self.aborts.get(route.name, 0) + 1
            self._notify(route, new, "abort")
        elif new.phase == rollout.PROMOTED:
            self._notify(route, new, "promoted")

    def _notify(self, route: Route, state: RouteState, event: str) -> None:
        hooks = [h for h in (route.rollout.webhooks if route.rollout else ()) if h.on == event]
        for hook in hooks:
            payload = self._payload(route, state, event)
            task = asyncio.get_running_loop().create_task(self.webhooks.call(hook, payload))
            task.add_done_callback(_log_notification)

    def _payload(self, route: Route, state: RouteState, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "route": route.name,
            "phase": state.phase,
            "step": state.step,
            "weights": rollout.weights(state, route),
            "reason": state.abort_reason or state.pause_reason,
            "revision": route.rollout.revision if route.rollout else None,
            "last_check": state.checks[-1] if state.checks else None,
        }

    def _log(self, route: Route, events: list[str]) -> None:
        for event in events:
            log.info("rollout route=%s %s", route.name, event)

    # -- operator actions -------------------------------------------------------------------
    async def act(self, name: str, action: str, full: bool = False,
                  reason: str | None = None) -> RouteState:
        """promote / abort / retry / pause / resume; raises KeyError or rollout.ActionError."""
        config = self.config
        assert config is not None
        route = next((r for r in config.routes if r.name == name), None)
        if route is None:
            raise KeyError(name)
        state = self.states[name]
        now, mono = time.time(), asyncio.get_running_loop().time()
        if action == "promote":
            new = rollout.promote(state, route, now, full)
        elif action == "abort":
            if state.phase == ABORTED:
                raise rollout.ActionError("already aborted")
            new = rollout.abort(state, f"manual: {reason or 'operator abort'}", now)
        elif action == "retry":
            new = rollout.retry(state, route, now)
            self._epoch[name] = mono  # judge only what the retried canary does from now
            self.sample(mono)
            self._next_check[name] = mono + (route.analysis.interval if route.analysis else 0)
        elif action == "pause":
            new = rollout.pause(state, route)
        elif action == "resume":
            new = rollout.resume(state, now)
        else:
            raise rollout.ActionError(f"unknown action {action!r}")
        log.info("rollout route=%s action=%s by operator", name, action)
        self._transition(route, state, new)
        self._dirty = False
        self.rebuild()
        if self.shared is not None:
            await self._sync(mono, pull=False)
        else:
            await self.store.save(self.states)
        return self.states[name]

    def describe(self, name: str) -> dict[str, Any]:
        state = self.states[name]
        config = self.config
        assert config is not None
        route = next(r for r in config.routes if r.name == name)
        hold = self._gate_hold.get(name)
        return {
            "strategy": route.strategy,
            "phase": state.phase,
            "revision": route.rollout.revision if route.rollout else None,
            "state_revision": state.revision,
            "step": state.step,
            "steps": len(route.rollout.steps) if route.rollout else 0,
            "canary": route.active if route.strategy == "blue-green" else route.canary,
            "baseline": state.previous_active if route.strategy == "blue-green"
            else route.baseline,
            "pause_reason": state.pause_reason,
            "abort_reason": state.abort_reason,
            "aborted_at": state.aborted_at,
            "consecutive_failures": state.failures,
            "consecutive_inconclusive": state.inconclusive,
            "gate": hold[1] if hold else None,
            "analysis_source": route.analysis.source if route.analysis else None,
            "prometheus": self.queries.get(name),
            "checks": list(state.checks),
        }


def _serving(weights: dict[str, int]) -> str | None:
    live = [v for v, w in weights.items() if w > 0]
    return live[0] if len(live) == 1 else None


def _log_notification(task: asyncio.Task[tuple[bool, str]]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    ok, detail = task.result()
    (log.info if ok else log.warning)("webhook: %s", detail)

