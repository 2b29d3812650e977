"""Applying one event to one route's rollout: (state, event, route, now) -> (state, effects).

Pure: the owner passes the wall clock and a fresh run id (used only when a run starts) and
carries out the effects afterwards. Decisions made here bump `seq` and are persisted; states
adopted from another replica are not re-sent and do not notify (their maker did).
"""

from __future__ import annotations

from dataclasses import replace

from splitproxy.config.models import Route
from splitproxy.config.steps import WebhookEvent
from splitproxy.rollout import guard, machine, release
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
    PeerUpdate,
    Persist,
    PhaseChanged,
    Rebuild,
    Reconfigure,
    Restore,
    Retire,
    Stored,
    Tick,
)
from splitproxy.rollout.identity import endpoints, identity, legacy_candidates
from splitproxy.rollout.machine import ABORTED, PAUSED, PROMOTED, ActionError
from splitproxy.rollout.notices import hooks_for, notices, payload
from splitproxy.rollout.state import (
    Actor,
    Gate,
    PauseReason,
    RouteState,
    decision,
    with_guard_of,
)
from splitproxy.rollout.verdicts import Outcome

GATE_RETRY = 2.0  # a pre-step webhook that said no is asked again after this long


def apply(
    state: RouteState | None, event: Event, route: Route, now: float, run: str,
    down: frozenset[tuple[str, str]] = frozenset(),
) -> tuple[RouteState, list[Effect]]:
    """The successor of `state` after `event`; raises ActionError for an action that does
    not apply (the state is then unchanged). `down`: the (route, version) pairs with no
    endpoint in rotation now, for the steps an approval or a pass lets through at once."""
    if isinstance(event, Restore):
        return _restore(event, route, now, run)
    assert state is not None, f"{type(event).__name__} before the route was restored"
    if isinstance(event, PeerUpdate):
        return _peer(state, event, route)
    effects: list[Effect] = []
    notes: list[str] = []
    if isinstance(event, Reconfigure):
        new = _reconfigure(state, route, now, run, effects)
    elif isinstance(event, Act):
        new = _act(state, event, route, now, run)
    elif isinstance(event, Tick):
        new, notes = _tick(state, event, route, now, effects)
    elif isinstance(event, Measurement):
        new, notes = _measured(state, event, route, now, effects, down)
    else:
        new, notes = _gate_answer(state, event, now)
        if event.ok and event.leader:
            new, steps = _tick(new, Tick(leader=True, down=down), route, now, effects)
            notes += steps
    return _decided(state, new, route, now, notes, effects)


# -- the events -------------------------------------------------------------------------------
def _restore(event: Restore, route: Route, now: float, run: str) -> tuple[RouteState, list[Effect]]:
    ident = identity(route)
    stored, previous = event.stored, event.previous
    if stored is not None and stored.identity == ident:
        effects: list[Effect] = [Stored(stored.identity, stored.seq)]
        if stored.phase == ABORTED:
            effects.append(Log("warning", f"stays aborted after restart: {stored.abort_reason}"))
        return replace(stored, gate=None), effects
    old = stored or previous
    if old is not None and old.legacy_revision is not None:
        color = legacy_candidates(route).get(old.legacy_revision, "")
        if color == route.active:
            # Format 1, same rollout: keep its decision (an abort stays an abort).
            by = None
            if old.phase == ABORTED:
                manual = (old.abort_reason or "").startswith("manual:")
                by = Actor.OPERATOR if manual else Actor.GUARD
            new = replace(old, identity=ident, run=run, active=route.active, seq=0,
                          legacy_revision=None, endpoints=endpoints(route), run_started=now,
                          aborted_by=by)
            return new, [Persist(new), Log("info", f"state of format 1 migrated: {new.phase}")]
        old = replace(old, active=color or None)  # format 1 knows what served if it matched
    new = machine.start(route, now, run, previous=old)
    effects = [Persist(new), NewRun(run),
               Log("info", f"new rollout {ident} run {run}: phase={new.phase}")]
    effects += [Log("warning", r.message()) for r in release.regressions(old, route)]
    if old is not None and old.identity and old.identity != ident:
        effects.append(Retire(old.identity))
    return new, effects


def _reconfigure(state: RouteState, route: Route, now: float, run: str,
                 effects: list[Effect]) -> RouteState:
    ident = identity(route)
    if state.identity == ident:
        if state.phase == PROMOTED and state.endpoints and state.endpoints != endpoints(route):
            effects.append(Log("warning", "endpoints changed after promotion without a new "
                               "rollout.revision: the new endpoints serve unwatched"))
        return state
    effects.append(Retire(state.identity))
    new = machine.start(route, now, run, previous=state)
    effects.append(Log("info", f"new rollout {ident} run {run}: phase={new.phase}"))
    effects += [Log("warning", r.message()) for r in release.regressions(state, route)]
    return new


def _act(state: RouteState, event: Act, route: Route, now: float, run: str) -> RouteState:
    action = event.action
    if action == Action.PROMOTE:
        return machine.promote(state, route, now, event.full)
    if action == Action.ABORT:
        if state.phase == ABORTED:
            raise ActionError("already aborted")
        return machine.abort(state, f"manual: {event.reason or 'operator abort'}", now,
                             Actor.OPERATOR)
    if action == Action.RETRY:
        return machine.retry(state, route, now, run)
    if action == Action.PAUSE:
        return machine.pause(state, route)
    return machine.resume(state, now)


def _tick(state: RouteState, event: Tick, route: Route, now: float,
          effects: list[Effect]) -> tuple[RouteState, list[str]]:
    """Due steps, on the replica that keeps the time. Each weight step first asks the
    pre-step webhooks, once per step and run; an approval is spent by its step. A blue-green
    switch being validated is checked instead."""
    if machine.validating(state):
        if not event.leader:
            return state, []
        pre = route.pre_switch
        judged = pre is not None and pre.analysis
        return machine.switch_checked(
            state, route, now, (route.name, route.active) in event.down,
            guard.passed(state, route) if judged else True)
    if not event.leader or not machine.has_steps(route) or state.phase == ABORTED:
        return state, []
    allowed: int | None = None
    hooks = hooks_for(route, WebhookEvent.PRE_STEP)
    if hooks:
        allowed = 0
        if machine.next_step_is_weight(state, route):
            gate = state.gate
            if gate is not None and (gate.run, gate.step) != (state.run, state.step):
                gate = None
            if gate is not None and gate.approved:
                allowed = 1
            elif gate is None or (not gate.asking and now >= gate.retry_at):
                state = replace(state, gate=Gate(state.run, state.step))
                effects.append(AskGate(state.run, state.step, hooks,
                                       payload(route, state, WebhookEvent.PRE_STEP)))
    return machine.advance(state, route, now, weight_steps=allowed,
                           passed=guard.passed(state, route),
                           canary_down=(route.name, route.canary) in event.down)


def _gate_answer(state: RouteState, event: GateAnswer, now: float) -> tuple[RouteState, list[str]]:
    gate = state.gate
    if gate is None or not gate.asking or (gate.run, gate.step) != (event.run, event.step) \
            or (state.run, state.step) != (event.run, event.step):
        return state, []  # asked for another run or step: spent with it
    if event.ok:
        return replace(state, gate=replace(gate, asking=False, approved=True,
                                           detail=None)), []
    held = replace(gate, asking=False, retry_at=now + GATE_RETRY, detail=event.detail)
    return replace(state, gate=held), [
        f"step {state.step + 1} held by pre-step webhook: {event.detail}"]


def _measured(state: RouteState, m: Measurement, route: Route, now: float,
              effects: list[Effect], down: frozenset[tuple[str, str]] = frozenset(),
              ) -> tuple[RouteState, list[str]]:
    """One check: fold the counts into the tests; a failing test aborts, a pass lets a pause
    that waits for evidence go on (at this very check)."""
    analysis = route.analysis
    if analysis is None or not m.leader:
        return state, []  # only the lease holder judges
    unjudged = machine.validating(state) and not (
        route.pre_switch is not None and route.pre_switch.analysis)
    if (m.run, m.step) != (state.run, state.step) or state.phase == ABORTED or unjudged:
        # Measured in an earlier run or step, or landed after an abort: history only.
        why = "the rollout is aborted" if m.run == state.run and state.phase == ABORTED \
            else "measured in an earlier run" if m.run != state.run \
            else "measured in an earlier step" if m.step != state.step \
            else "validating a switch without pre-switch analysis"
        effects.append(Checked(str(Outcome.INCONCLUSIVE)))
        checks = (*state.checks, guard.stale_check(m, now, why))[-analysis.history:]
        return replace(state, checks=checks), []
    a = guard.assess(state, m, route, now)
    effects.append(Checked(str(a.check["result"])))
    new = replace(state, evidence=a.evidence,
                  checks=(*state.checks, a.check)[-analysis.history:])
    if a.outcome is Outcome.FAIL and new.phase != PROMOTED:
        # Promoted is final: the guard reports, as Argo Rollouts ends analysis on completion.
        what = "pre-switch guard" if machine.validating(new) else "guard"
        reason = f"{what}: {a.summary}"
        return machine.abort(new, reason, now, Actor.GUARD), [f"aborted: {reason}"]
    if a.outcome is Outcome.PASS and new.phase == PAUSED \
            and new.pause_reason == PauseReason.WAITING:
        return _tick(new, Tick(leader=True, down=down), route, now, effects)
    return new, []


def _peer(state: RouteState, event: PeerUpdate, route: Route) -> tuple[RouteState, list[Effect]]:
    theirs = event.state
    if theirs.identity != state.identity:
        return state, []  # a replica on another config: its own key, not ours
    effects: list[Effect] = [Stored(theirs.identity, theirs.seq)]
    if event.lost_race:
        # Our write lost the compare-and-set. An abort is never lost: it goes on top of the
        # winner (same rollout), unless the winner is a promotion and ours was the guard's.
        keep = state.phase == ABORTED and theirs.phase != ABORTED and (
            state.aborted_by == Actor.OPERATOR or theirs.phase != PROMOTED)
        if keep:
            assert state.abort_reason is not None and state.aborted_at is not None
            base = with_guard_of(theirs, state)
            new = machine.abort(base, state.abort_reason, state.aborted_at,
                                state.aborted_by or Actor.GUARD)
            new = replace(new, seq=theirs.seq + 1, endpoints=endpoints(route))
            effects.append(Persist(new))
            effects.append(Log("info", f"abort re-applied on top of a concurrent "
                               f"{theirs.phase} from another replica"))
            return new, effects + _consequences(state, new, route, decided=False)
    elif theirs.seq <= state.seq:
        return state, []
    new = with_guard_of(theirs, state)
    return new, effects + _consequences(state, new, route, decided=False)


# -- what follows from a new state ------------------------------------------------------------
def _decided(old: RouteState, new: RouteState, route: Route, now: float, notes: list[str],
             effects: list[Effect]) -> tuple[RouteState, list[Effect]]:
    """A state decided here: the log lines, then persisted (seq + 1) if the decision changed,
    and everything that follows from it."""
    out: list[Effect] = [Log("info", n) for n in notes]
    if decision(new) != decision(old):
        seq = old.seq + 1 if new.identity == old.identity else 0
        new = replace(new, seq=seq, endpoints=endpoints(route))
        out.append(Persist(new))
    return new, out + effects + _consequences(old, new, route, decided=True, now=now)


def _consequences(old: RouteState, new: RouteState, route: Route,
                  decided: bool, now: float = 0.0) -> list[Effect]:
    out: list[Effect] = []
    if machine.weights(new, route) != machine.weights(old, route) or new.run != old.run \
            or machine.header_routes(new, route) != machine.header_routes(old, route) \
            or machine.mirror(new, route) != machine.mirror(old, route):
        out.append(Rebuild())  # the run is in the sticky cookie
    if new.run != old.run:
        out.append(NewRun(new.run))
    if new.phase != old.phase:
        by = "" if decided else " (decided by another replica)"
        out.append(Log("warning" if new.phase == ABORTED else "info",
                       f"phase={old.phase}->{new.phase}{by} step={new.step} "
                       f"weight={new.weight} reason="
                       f"{new.abort_reason or new.pause_reason or '-'}"))
        out.append(PhaseChanged(old.phase, new.phase))
    if not decided:
        return out
    out += notices(old, new, route, now)  # every transition decided here, to its hooks
    return out
