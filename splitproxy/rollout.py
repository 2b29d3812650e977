"""The rollout state machine of one route: pure transitions, no clock, no I/O.

Phases: `idle` (no steps; the config's weights serve), `progressing` (step i), `paused`
(manually, waiting for a promote, outside the deployment window, or blind after too many
inconclusive checks), `promoted` and `aborted`. Every function takes the current state and
returns a new one; the controller persists it and turns it into weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from splitproxy.analysis import Check
from splitproxy.config import Analysis, DeployWindow, Route

IDLE, PROGRESSING, PAUSED, PROMOTED, ABORTED = (
    "idle", "progressing", "paused", "promoted", "aborted",
)
PHASES = (IDLE, PROGRESSING, PAUSED, PROMOTED, ABORTED)

# Why a rollout is paused; only some may resume by themselves.
MANUAL, AWAIT_PROMOTE, OUTSIDE_WINDOW, INCONCLUSIVE = (
    "manual", "waiting for promote", "outside deployment window", "inconclusive checks",
)


@dataclass(frozen=True, slots=True)
class RouteState:
    revision: str  # identity of what is being rolled out; a new one starts over
    phase: str = IDLE
    step: int = 0  # index of the step being carried out (== len(steps) when done)
    step_started: float = 0.0  # wall clock, so a pause survives a restart
    weight: int | None = None  # canary weight set by the last set_weight step
    pause_reason: str | None = None
    abort_reason: str | None = None
    aborted_at: float | None = None
    failures: int = 0  # failing checks in a row
    inconclusive: int = 0  # inconclusive checks in a row
    previous_active: str | None = None  # blue-green: the color to switch back to
    checks: tuple[dict[str, Any], ...] = field(default=())  # newest last, bounded
    seq: int = 0  # counts decisions; a shared store accepts a write only on top of its own

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RouteState:
        data = dict(data)
        data["checks"] = tuple(data.get("checks", ()))
        return cls(**data)


def decision(state: RouteState) -> tuple[Any, ...]:
    """The part of a state every replica must agree on. Check counters and history stay
    with the replica that judged them."""
    return (state.revision, state.phase, state.step, state.step_started, state.weight,
            state.pause_reason, state.abort_reason, state.previous_active)


def revision_of(route: Route) -> str:
    """What identifies a rollout: versions, weights, steps and revision; thresholds, timeouts
    and webhooks may change without restarting it."""
    rollout = route.rollout
    ident = {
        "versions": {k: list(v.endpoints) for k, v in route.versions.items()},
        "weights": route.weights,
        "active": route.active,
        "steps": [s.model_dump() for s in rollout.steps] if rollout else None,
        "revision": rollout.revision if rollout else None,
        "canary": route.canary,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def start(route: Route, now: float, serving: str | None = None) -> RouteState:
    """A fresh state for the route's current revision (a new rollout starts at step 0).

    `serving`: for blue-green, the color that served until now: switched back to if the new
    active color fails its analysis.
    """
    prev_active = serving if route.strategy == "blue-green" and serving != route.active else None
    phase = PROGRESSING if route.rollout is not None else IDLE
    return RouteState(revision_of(route), phase=phase, step_started=now,
                      previous_active=prev_active)


def effective_active(state: RouteState, route: Route) -> str | None:
    if state.phase == ABORTED and state.previous_active is not None:
        return state.previous_active
    return route.active


def weights(state: RouteState, route: Route) -> dict[str, int]:
    """The weights traffic gets now."""
    configured = route.configured_weights
    if route.strategy == "blue-green":
        active = effective_active(state, route) or route.active
        return {v: 100 if v == active else 0 for v in route.versions}
    if state.phase == ABORTED:
        return {v: 100 if v == route.baseline else 0 for v in route.versions}
    canary = route.canary
    if state.phase == PROMOTED and canary is not None:
        return {v: 100 if v == canary else 0 for v in route.versions}
    if state.weight is None or canary is None:
        return configured
    out = dict.fromkeys(route.versions, 0)
    out[canary] = state.weight
    out[route.baseline] = 100 - state.weight
    return out


def in_window(window: DeployWindow | None, now: float) -> bool:
    if window is None:
        return True
    local = datetime.fromtimestamp(now, ZoneInfo(window.tz))
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[local.weekday()]
    hhmm = local.strftime("%H:%M")
    return day in window.days and window.start <= hhmm < window.end


def advance(
    state: RouteState, route: Route, now: float, weight_steps: int | None = None
) -> tuple[RouteState, list[str]]:
    """Carry out steps that are due, at most `weight_steps` of them `set_weight` steps (a
    pre-step webhook gates each one). Returns the new state and what happened."""
    rollout = route.rollout
    events: list[str] = []
    if rollout is None or state.phase in (ABORTED, PROMOTED, IDLE):
        return state, events
    open_now = in_window(rollout.window, now)
    if state.phase == PAUSED:
        if state.pause_reason == OUTSIDE_WINDOW and open_now:
            state = replace(state, phase=PROGRESSING, pause_reason=None, step_started=now)
            events.append("deployment window open: progressing")
        else:
            return state, events
    steps = rollout.steps
    while state.phase == PROGRESSING:
        if state.step >= len(steps):
            state = replace(state, phase=PROMOTED)
            events.append("all steps done: promoted")
            break
        if not open_now:
            state = replace(state, phase=PAUSED, pause_reason=OUTSIDE_WINDOW)
            events.append("outside deployment window: paused")
            break
        step = steps[state.step]
        if step.set_weight is not None:
            if weight_steps is not None:
                if weight_steps <= 0:
                    break
                weight_steps -= 1
            state = replace(state, weight=step.set_weight, step=state.step + 1, step_started=now)
            events.append(f"step {state.step}: set_weight {step.set_weight}")
            continue
        assert step.pause is not None
        duration = step.pause.duration
        if duration is None:
            state = replace(state, phase=PAUSED, pause_reason=AWAIT_PROMOTE)
            events.append(f"step {state.step + 1}: paused until promoted")
            break
        if now - state.step_started >= duration:
            state = replace(state, step=state.step + 1, step_started=now)
            events.append(f"step {state.step}: pause of {duration:g}s over")
            continue
        break
    return state, events


def next_step_is_weight(state: RouteState, route: Route) -> bool:
    """True when `advance` would now change weights (what a pre-step webhook gates)."""
    rollout = route.rollout
    if rollout is None or state.phase != PROGRESSING or state.step >= len(rollout.steps):
        return False
    return rollout.steps[state.step].set_weight is not None


def record_check(
    state: RouteState, check: Check, analysis: Analysis, route: Route, now: float
) -> tuple[RouteState, list[str]]:
    """Fold one analysis check into the state; may abort or pause."""
    checks = (*state.checks, check.to_dict())[-analysis.history:]
    events: list[str] = []
    if state.phase == ABORTED:
        return replace(state, checks=checks), events
    if check.result == "fail":
        failures = state.failures + 1
        state = replace(state, failures=failures, inconclusive=0, checks=checks)
        if failures >= analysis.failure_limit:
            reason = f"{failures} failing checks in a row: {check.summary()}"
            state = abort(state, reason, now)
            events.append(f"aborted: {reason}")
        return state, events
    if check.result == "pass":
        return replace(state, failures=0, inconclusive=0, checks=checks), events
    inconclusive = state.inconclusive + 1
    state = replace(state, inconclusive=inconclusive, checks=checks)
    limit = analysis.inconclusive_limit
    if limit is not None and inconclusive >= limit and state.phase == PROGRESSING \
            and route.rollout is not None:
        state = replace(state, phase=PAUSED, pause_reason=INCONCLUSIVE)
        events.append(f"paused: {inconclusive} inconclusive checks in a row")
    return state, events


# -- operator actions -------------------------------------------------------------------------
class ActionError(Exception):
    """An action that does not apply in the current phase (HTTP 409)."""


def abort(state: RouteState, reason: str, now: float) -> RouteState:
    return replace(state, phase=ABORTED, abort_reason=reason, aborted_at=now, failures=0)


def promote(state: RouteState, route: Route, now: float, full: bool) -> RouteState:
    rollout = route.rollout
    if rollout is None:
        raise ActionError("this route has no rollout steps to promote")
    if state.phase in (ABORTED, PROMOTED):
        raise ActionError(f"rollout is {state.phase}")
    if full:
        return replace(state, phase=PROMOTED, step=len(rollout.steps), pause_reason=None,
                       step_started=now)
    if state.phase == PAUSED and state.pause_reason == AWAIT_PROMOTE:
        return replace(state, phase=PROGRESSING, step=state.step + 1, pause_reason=None,
                       step_started=now)
    if state.phase == PROGRESSING and state.step < len(rollout.steps) \
            and rollout.steps[state.step].pause is not None:
        # Promote during a timed pause skips the rest of it, as Argo Rollouts does.
        return replace(state, step=state.step + 1, step_started=now)
    raise ActionError(f"nothing to promote: rollout is {state.phase}"
                      + (f" ({state.pause_reason})" if state.pause_reason else ""))


def retry(state: RouteState, route: Route, now: float) -> RouteState:
    if state.phase != ABORTED:
        raise ActionError(f"only an aborted rollout can be retried (it is {state.phase})")
    fresh = start(route, now)
    # Blue/green: the retried switch is watched again, with the same color to fall back to.
    return replace(fresh, previous_active=state.previous_active, checks=state.checks)


def pause(state: RouteState, route: Route) -> RouteState:
    if route.rollout is None or state.phase != PROGRESSING:
        raise ActionError(f"only a progressing rollout can be paused (it is {state.phase})")
    return replace(state, phase=PAUSED, pause_reason=MANUAL)


def resume(state: RouteState, now: float) -> RouteState:
    if state.phase != PAUSED or state.pause_reason not in (MANUAL, INCONCLUSIVE):
        raise ActionError("only a manually paused or inconclusive rollout resumes; "
                          "use promote to pass a `pause: {}` step")
    return replace(state, phase=PROGRESSING, pause_reason=None, inconclusive=0,
                   step_started=now)
