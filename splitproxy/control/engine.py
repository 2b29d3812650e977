"""The rollout owner: the one place that applies rollout events and acts on their effects.

Operator actions, reloads, measurements (`readings`), timer ticks, gate answers and other
replicas' states are events in one ordered queue, consumed by one task. Applying an event is
the pure `rollout.fold.apply`; its effects (persist, swap the routing table, log, count, call
webhooks, ask gates, restart readings) are carried out right after, and nothing is awaited in
between: a state is never written back from a decision made before an await. Whatever takes
time (a measurement, a webhook, a store write) runs as a task of its own and reports back as
an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

from splitproxy.config.guard import Source
from splitproxy.config.headerroute import HeaderRoute
from splitproxy.config.mirror import Mirror
from splitproxy.config.models import Config, Route, Strategy
from splitproxy.config.steps import WebhookEvent
from splitproxy.control.clock import SYSTEM, Clock
from splitproxy.control.guardlog import GuardLog
from splitproxy.control.readings import Readings, default_sources
from splitproxy.control.sources.measure import MetricSource
from splitproxy.control.status import (
    Check,
    GuardReport,
    HeaderRouteStatus,
    MirrorStatus,
    PendingWrite,
    RolloutStatus,
)
from splitproxy.control.stores.store import StateStore, Wanted
from splitproxy.control.sync import StateSync
from splitproxy.control.tasks import cancel_and_wait
from splitproxy.control.webhooks import Webhooks
from splitproxy.dataplane.stats import VersionStats
from splitproxy.rollout import ActionError, RouteState, fold, guard, identity, machine
from splitproxy.rollout.events import (
    Act,
    Action,
    AskGate,
    Checked,
    Effect,
    Event,
    GateAnswer,
    Log,
    Measurement,
    NewRun,
    Notify,
    Persist,
    PhaseChanged,
    Rebuild,
    Reconfigure,
    Restore,
    Retire,
    Stored,
    Tick,
)
from splitproxy.rollout.identity import legacy_candidates
from splitproxy.rollout.state import Phase

log = logging.getLogger("splitproxy.rollout")

TICK = 0.1  # seconds between timer ticks (due steps, windows, gates, measurements)
ACT_WRITE_WAIT = 0.5  # an action's answer waits this long (real time) for its write to land
START_WRITE_WAIT = 2.0

# What an action's caller gets: the state it made, and its write (None if nothing to write).
Reply = tuple[RouteState, "asyncio.Future[bool] | None"]
Queued = tuple[str | None, Event, "asyncio.Future[Reply] | None"]


def new_run() -> str:
    return secrets.token_hex(4)


class RolloutEngine:
    def __init__(
        self,
        store: StateStore,
        counters: Callable[[], Iterable[VersionStats]],
        rebuild: Callable[[], None],
        clock: Clock = SYSTEM,
        sources: dict[Source, MetricSource] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self._rebuild = rebuild  # swaps in a routing table made from `weights()` and `runs()`
        # The (route, version) pairs with no endpoint up, for the pre-switch checks; the
        # controller sets it (the data plane knows the endpoints' health).
        self.all_down: Callable[[], frozenset[tuple[str, str]]] = frozenset
        self.config: Config | None = None
        self.routes: dict[str, Route] = {}
        self.states: dict[str, RouteState] = {}
        self.aborts: dict[str, int] = {}
        # Aborts that shifted traffic onto a baseline with no endpoint up (README: Active health).
        self.aborts_onto_down: dict[str, int] = {}
        self.last_abort: dict[str, float] = {}  # route -> when its last abort happened
        self.checks_total: dict[tuple[str, str], int] = {}
        self.webhooks = Webhooks()
        self.guard_log = GuardLog()
        self.sync = StateSync(store, clock, self._post, lambda: self.states)
        self.readings = Readings(store, clock, sources or default_sources(store, counters),
                                 self._post, lambda: (self.routes, self.states))
        self._queue: asyncio.Queue[Queued] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._quiet = True  # no table swaps: before the first table, and inside a reload
        self._wanted_swap = False

    # -- life cycle -------------------------------------------------------------------------
    async def start(self, config: Config) -> None:
        self._set_config(config)
        await self.store.open(self.sync.changed)
        wanted = {r.name: Wanted(identity(r), tuple(legacy_candidates(r)))
                  for r in config.routes}
        loaded = await self.store.load(wanted) or {}
        mono = self.clock.monotonic()
        for route in config.routes:
            got = loaded.get(route.name)
            self._apply(route.name, Restore(got.state if got else None,
                                            got.previous if got else None))
            self.readings.due(route.name, mono)
        self.sync.start()
        await self.sync.flush(START_WRITE_WAIT)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consume()), loop.create_task(self._tick())]
        self._quiet = False

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._quiet = True
        self._drain()  # decisions already asked for (an abort) still count
        await self.readings.stop()
        await self.sync.stop()
        await self.store.close()
        await self.webhooks.close()

    def _set_config(self, config: Config) -> None:
        self.config = config
        self.routes = {r.name: r for r in config.routes}

    # -- what the data plane gets -----------------------------------------------------------
    def weights(self) -> dict[str, dict[str, float]]:
        return {n: machine.weights(self.states[n], r) for n, r in self.routes.items()}

    def header_routes(self) -> dict[str, tuple[HeaderRoute, ...]]:
        """The header/cookie routes of each route's current step."""
        return {n: machine.header_routes(self.states[n], r) for n, r in self.routes.items()}

    def mirrors(self) -> dict[str, Mirror | None]:
        """The shadow traffic in force on each route (a `set_mirror` step's, or its own)."""
        return {n: machine.mirror(self.states[n], r) for n, r in self.routes.items()}

    def runs(self) -> dict[str, str]:
        """The run each route's sticky cookies belong to."""
        return {n: self.states[n].run for n in self.routes}

    # -- events -----------------------------------------------------------------------------
    def _post(self, route: str | None, event: Event) -> None:
        self._queue.put_nowait((route, event, None))

    async def _consume(self) -> None:
        while True:
            item = await self._queue.get()
            self._handle(item)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._handle(self._queue.get_nowait())

    def _handle(self, item: Queued) -> None:
        name, event, reply = item
        try:
            if name is None:  # a tick: for every route, one table swap at most
                with self._one_rebuild():
                    for route in list(self.routes):
                        self._apply(route, event)
                return
            state, written = self._apply(name, event)
        except Exception as exc:
            if reply is not None and not reply.done():
                reply.set_exception(exc)
            elif not isinstance(exc, (ActionError, KeyError)):
                log.exception("rollout event %s failed", type(event).__name__)
            return
        if reply is not None and not reply.done():
            reply.set_result((state, written))

    def _apply(self, name: str, event: Event) -> Reply:
        route = self.routes.get(name)
        if route is None:
            raise KeyError(name)  # a route a reload removed: its news is void
        old = self.states.get(name)
        # A run starts only at a restore, a reload or an action (a retry).
        run = new_run() if isinstance(event, (Restore, Reconfigure, Act)) else ""
        # Only an approval or a pass can carry out steps off the timer: they need `down` too.
        down = self.all_down() if isinstance(event, GateAnswer | Measurement) else frozenset()
        new, effects = fold.apply(old, event, route, self.clock.time(), run, down)
        self.states[name] = new
        return new, self._carry_out(name, route, effects)

    def _revert_target(self, name: str, route: Route) -> tuple[str, bool]:
        """The version an abort sent everything to (the baseline; blue/green: the color
        switched back to), and whether it has an endpoint up."""
        weights = machine.weights(self.states[name], route)
        target = max(weights, key=lambda v: weights[v])
        return target, (name, target) not in self.all_down()

    def _check_baseline(self, name: str, route: Route) -> None:
        """An abort sends everything to the baseline: say so loudly when it has no endpoint up
        (clients get 503s, or the 502s of its last endpoints), as the abort itself stands."""
        baseline, healthy = self._revert_target(name, route)
        if not healthy:
            self.aborts_onto_down[name] = self.aborts_onto_down.get(name, 0) + 1
            log.error("rollout route=%s aborted onto baseline %s, which has no healthy "
                      "endpoint: requests to it fail until one is back", name, baseline,
                      extra={"route": name})

    def _abort_notice(self, name: str, route: Route, notice: Notify) -> Notify:
        """An abort's notification names the version it reverted to and whether that one has
        a healthy endpoint: an operator must know at once when the revert target is bad too."""
        target, healthy = self._revert_target(name, route)
        payload = {**notice.payload, "revert_to": target, "revert_to_healthy": healthy}
        if not healthy:
            payload["message"] = (f"{payload.get('message', name)}. WARNING: {target} has no "
                                  "healthy endpoint: its requests fail until one is back")
        return replace(notice, payload=payload)

    def _carry_out(self, name: str, route: Route,
                   effects: list[Effect]) -> asyncio.Future[bool] | None:
        rebuild = False
        written = None
        # The guard's own abort: a failed check in the same breath as the phase change.
        judged = any(isinstance(e, Checked) and e.result == "fail" for e in effects)
        for effect in effects:
            if isinstance(effect, Persist):
                written = self.sync.submit(name, effect.state)
            elif isinstance(effect, Stored):
                self.sync.note_stored(name, effect.identity, effect.seq)
            elif isinstance(effect, Retire):
                self.sync.retire(name, effect.identity)
            elif isinstance(effect, Rebuild):
                rebuild = True
            elif isinstance(effect, Log):
                level = logging.WARNING if effect.level == "warning" else logging.INFO
                log.log(level, "rollout route=%s %s", name, effect.message,
                        extra={"route": name})
            elif isinstance(effect, PhaseChanged):
                if effect.new == Phase.ABORTED:
                    self.aborts[name] = self.aborts.get(name, 0) + 1
                    self._check_baseline(name, route)
                    self.last_abort[name] = self.states[name].aborted_at or self.clock.time()
                    if judged:
                        self.guard_log.aborted(name, self.states[name], route)
            elif isinstance(effect, Checked):
                key = (name, effect.result)
                self.checks_total[key] = self.checks_total.get(key, 0) + 1
                self.guard_log.checked(name, self.states[name], route)
            elif isinstance(effect, NewRun):
                self.readings.new_run(name)
                self.guard_log.forget(name)
            elif isinstance(effect, Notify):
                if effect.event == WebhookEvent.ABORT:
                    effect = self._abort_notice(name, route, effect)
                self.webhooks.notify(effect.hooks, effect.payload)
            elif isinstance(effect, AskGate):
                self._ask_gate(name, effect)
        if rebuild:
            self._swap_table()
        return written

    @contextlib.contextmanager
    def _one_rebuild(self) -> Iterator[None]:
        quiet, self._quiet = self._quiet, True
        self._wanted_swap = False
        try:
            yield
        finally:
            self._quiet = quiet
            if self._wanted_swap and not quiet:
                self._rebuild()

    def _swap_table(self) -> None:
        if self._quiet:
            self._wanted_swap = True
        else:
            self._rebuild()

    # -- reloads ----------------------------------------------------------------------------
    def reconfigure(self, new: Config) -> None:
        """A reloaded config, applied before this returns (the caller builds the table next):
        events already queued first, in order, then the reload, one route at a time. A route
        whose identity is unchanged keeps its state, an abort included."""
        quiet, self._quiet = self._quiet, True
        try:
            self._drain()
            old = self.routes
            self._set_config(new)
            for name in old.keys() - self.routes.keys():
                state = self.states.pop(name)
                self.sync.retire(name, state.identity)
                self.readings.forget(name)
                self.guard_log.forget(name)
            for route in new.routes:
                event = Reconfigure() if route.name in self.states else Restore()
                self._apply(route.name, event)
        finally:
            self._quiet = quiet

    # -- timers -----------------------------------------------------------------------------
    async def _tick(self) -> None:
        start = self.clock.monotonic()
        k = 0
        while True:
            self.readings.start(self.clock.monotonic())
            self._post(None, Tick(leader=self.store.is_leader(), down=self.all_down()))
            # Ticks on a fixed grid: a late one does not push the others back.
            k = max(k + 1, math.floor((self.clock.monotonic() - start) / TICK) + 1)
            await self.clock.sleep(max(0.0, start + k * TICK - self.clock.monotonic()))

    # -- gates ------------------------------------------------------------------------------
    def _ask_gate(self, name: str, ask: AskGate) -> None:
        def answer(ok: bool, detail: str) -> None:
            self._post(name, GateAnswer(ask.run, ask.step, ok, detail,
                                        leader=self.store.is_leader()))

        self.webhooks.ask(ask.hooks, ask.payload, answer)

    # -- operator actions -------------------------------------------------------------------
    async def act(self, name: str, action: Action, full: bool = False,
                  reason: str | None = None) -> RouteState:
        """promote / abort / retry / pause / resume, applied in order with everything else;
        raises KeyError or rollout.ActionError. Answers once the decision is made and its
        write landed or had a moment to (/status shows a write still pending)."""
        if name not in self.routes:
            raise KeyError(name)
        kind = Action(action)  # the member, also when a caller passes its value
        reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        log.info("rollout route=%s action=%s by operator", name, kind)
        self._queue.put_nowait((name, Act(kind, full, reason), reply))
        state, written = await reply
        if written is not None and not written.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(written), ACT_WRITE_WAIT)
        return state

    # -- reporting --------------------------------------------------------------------------
    def pending_writes(self) -> dict[str, PendingWrite]:
        return self.sync.pending()

    def describe(self, name: str, state: RouteState | None = None) -> RolloutStatus:
        """A route's rollout for /status (`state`: one it had, such as an action's result)."""
        state = state or self.states[name]
        route = self.routes[name]
        gate = state.gate
        pending = self.sync.pending().get(name)
        report = guard.report(state, route)
        blue_green = route.strategy == Strategy.BLUE_GREEN
        return RolloutStatus(
            strategy=route.strategy,
            phase=state.phase,
            revision=route.rollout.revision if route.rollout else None,
            identity=state.identity,
            run=state.run,
            run_started=state.run_started,
            step=state.step,
            steps=len(route.rollout.steps) if route.rollout else 0,
            canary=route.active if blue_green else route.canary,
            baseline=state.previous_active if blue_green else route.baseline,
            pause_reason=state.pause_reason,
            abort_reason=state.abort_reason,
            aborted_at=state.aborted_at,
            aborted_by=state.aborted_by,
            guard=GuardReport.model_validate(report) if report is not None else None,
            judging=self.readings.judging if route.analysis else None,
            gate=gate.detail if gate is not None and gate.run == state.run
            and gate.step == state.step else None,
            write_pending=pending,
            analysis_source=route.analysis.source if route.analysis else None,
            prometheus=self.readings.queries.get(name),
            # analysis.metrics: each one's PromQL at the latest reading, and its error
            metric_queries=self.readings.custom.shown.get(name),
            checks=[Check.model_validate(c) for c in state.checks],
            header_routes=[HeaderRouteStatus.model_validate(h.model_dump(mode="json"))
                           for h in machine.header_routes(state, route)],
            mirror=MirrorStatus.of(machine.mirror(state, route)),
            switching_to=route.active if machine.validating(state) else None,
        )
