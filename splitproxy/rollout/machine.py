"""The rollout state machine of one route: pure transitions, no clock, no I/O.

`idle` (no steps: the config's weights serve), `progressing` (step i), `paused` (manually,
waiting for a promote, outside the deployment window, or waiting for the guard's evidence),
`promoted` (final for its run) and `aborted` (all weight on the baseline until a retry or a
new rollout). Every function takes a state and returns its successor.
"""

from __future__ import annotations

from dataclasses import replace

from splitproxy.config.headerroute import HeaderRoute
from splitproxy.config.mirror import Mirror
from splitproxy.config.models import Route, Strategy
from splitproxy.rollout.identity import endpoints, identity
from splitproxy.rollout.schedule import in_window
from splitproxy.rollout.state import Actor, PauseReason, Phase, RouteState

ABORTED, IDLE, PAUSED, PROGRESSING, PROMOTED = (
    Phase.ABORTED, Phase.IDLE, Phase.PAUSED, Phase.PROGRESSING, Phase.PROMOTED)


class ActionError(Exception):
    """An action that does not apply in the current phase (HTTP 409)."""


def has_steps(route: Route) -> bool:
    return route.rollout is not None and bool(route.rollout.steps)


def validating(state: RouteState) -> bool:
    """Blue-green: a switch waiting for its pre-switch checks; the previous color serves."""
    return state.phase == PAUSED and state.pause_reason == PauseReason.VALIDATING


def serving(state: RouteState) -> str | None:
    """Blue-green: the color that took the traffic under this state (None: unknown)."""
    if (state.phase == ABORTED or validating(state)) and state.previous_active is not None:
        return state.previous_active
    return state.active


def _first_phase(route: Route, prev_active: str | None) -> tuple[Phase, PauseReason | None]:
    if route.strategy == Strategy.BLUE_GREEN and prev_active is not None \
            and route.pre_switch is not None:
        return PAUSED, PauseReason.VALIDATING
    return (PROGRESSING if has_steps(route) else IDLE), None


def start(route: Route, now: float, run: str, previous: RouteState | None = None) -> RouteState:
    """A new run of the route's rollout, at step 0.

    `previous`: the state of the rollout that ran before (whatever its identity): for
    blue-green, the color it served is switched back to if the new active color fails.
    """
    prev_active = None
    if route.strategy == Strategy.BLUE_GREEN and previous is not None:
        before = serving(previous)
        prev_active = before if before != route.active and before in route.versions else None
    phase, reason = _first_phase(route, prev_active)
    return RouteState(identity(route), run, phase=phase, pause_reason=reason,
                      step_started=now, run_started=now, active=route.active,
                      previous_active=prev_active, endpoints=endpoints(route),
                      checks=previous.checks if previous is not None else ())


def effective_active(state: RouteState, route: Route) -> str | None:
    if (state.phase == ABORTED or validating(state)) and state.previous_active is not None:
        return state.previous_active
    return route.active


def header_routes(state: RouteState, route: Route) -> tuple[HeaderRoute, ...]:
    """The header/cookie routes in force: those of the steps already carried out, while the
    rollout runs (progressing or paused). None after an abort or the promotion, where all
    traffic is on one version anyway, nor before their step."""
    rollout = route.rollout
    if rollout is None or state.phase not in (PROGRESSING, PAUSED):
        return ()
    return tuple(s.set_header_route for s in rollout.steps[:state.step]
                 if s.set_header_route is not None)


def mirror(state: RouteState, route: Route) -> Mirror | None:
    """The shadow traffic in force: that of the latest `set_mirror` step carried out while the
    rollout runs (progressing or paused; None if it turned copies off), else the route's own
    `mirror` (before the first such step, after an abort and at promotion)."""
    rollout, canary = route.rollout, route.canary
    if rollout is None or canary is None or state.phase not in (PROGRESSING, PAUSED):
        return route.mirror
    for step in reversed(rollout.steps[:state.step]):
        if step.set_mirror is not None:
            return step.set_mirror.mirror(canary)
    return route.mirror


def weights(state: RouteState, route: Route) -> dict[str, float]:
    """The weights traffic gets now."""
    if route.strategy == Strategy.BLUE_GREEN:
        active = effective_active(state, route) or route.active
        return {v: 100 if v == active else 0 for v in route.versions}
    if state.phase == ABORTED:
        return {v: 100 if v == route.baseline else 0 for v in route.versions}
    canary = route.canary
    if state.phase == PROMOTED and canary is not None:
        return {v: 100 if v == canary else 0 for v in route.versions}
    if state.weight is None or canary is None:
        return route.configured_weights
    out: dict[str, float] = dict.fromkeys(route.versions, 0)
    out[canary] = state.weight
    # Rounded to the hundredths weights are made of (100 - 0.07 is 99.93000000000001).
    rest = round(100 - state.weight, 2)
    out[route.baseline] = int(rest) if rest == int(rest) else rest
    return out


def advance(
    state: RouteState, route: Route, now: float, weight_steps: int | None = None,
    passed: bool = True, canary_down: bool = False,
) -> tuple[RouteState, list[str]]:
    """Carry out steps that are due, at most `weight_steps` of them `set_weight` steps (a
    pre-step webhook gates each one). A timed pause ends when its time is up and `passed`
    (the guard passed the step at its latest check, or does not gate); until then it waits
    for evidence. A weight step above 0 waits while `canary_down` (no endpoint of the canary
    in rotation): paused, `no healthy endpoint`, until one is. Returns the new state and what
    happened."""
    rollout = route.rollout
    events: list[str] = []
    if rollout is None or state.phase in (ABORTED, PROMOTED, IDLE):
        return state, events
    open_now = in_window(rollout.window, now)
    if state.phase == PAUSED:
        if state.pause_reason == PauseReason.OUTSIDE_WINDOW and open_now:
            state = replace(state, phase=PROGRESSING, pause_reason=None, step_started=now)
            events.append("deployment window open: progressing")
        elif state.pause_reason == PauseReason.WAITING and passed:
            state = replace(state, phase=PROGRESSING, pause_reason=None)
            events.append(f"step {state.step + 1}: the guard passed")
        elif state.pause_reason == PauseReason.NO_HEALTHY and not canary_down:
            state = replace(state, phase=PROGRESSING, pause_reason=None)
            events.append(f"step {state.step + 1}: {route.canary} has a healthy endpoint again")
        else:
            return state, events
    steps = rollout.steps
    while state.phase == PROGRESSING:
        if state.step >= len(steps):
            state = promoted(state, route)
            events.append("all steps done: promoted")
            break
        if not open_now:
            state = replace(state, phase=PAUSED, pause_reason=PauseReason.OUTSIDE_WINDOW)
            events.append("outside deployment window: paused")
            break
        step = steps[state.step]
        if step.set_weight is not None:
            if canary_down and step.set_weight > 0:
                state = replace(state, phase=PAUSED, pause_reason=PauseReason.NO_HEALTHY)
                events.append(f"step {state.step + 1}: set_weight {step.set_weight} waits: "
                              f"{route.canary} has no healthy endpoint")
                break
            if weight_steps is not None:
                if weight_steps <= 0:
                    break
                weight_steps -= 1
            state = replace(state, weight=step.set_weight, step=state.step + 1, step_started=now)
            events.append(f"step {state.step}: set_weight {step.set_weight}")
            continue
        if step.set_header_route is not None:
            state = replace(state, step=state.step + 1, step_started=now)
            events.append(f"step {state.step}: set_header_route "
                          f"{step.set_header_route.describe()}")
            continue
        if step.set_mirror is not None:
            state = replace(state, step=state.step + 1, step_started=now)
            events.append(f"step {state.step}: set_mirror {step.set_mirror.describe()}")
            continue
        assert step.pause is not None
        duration = step.pause.duration
        if duration is None:
            state = replace(state, phase=PAUSED, pause_reason=PauseReason.AWAIT_PROMOTE)
            events.append(f"step {state.step + 1}: paused until promoted")
            break
        if now - state.step_started >= duration:
            if not passed:
                state = replace(state, phase=PAUSED, pause_reason=PauseReason.WAITING)
                events.append(f"step {state.step + 1}: pause of {duration:g}s over, "
                              "waiting for evidence")
                break
            state = replace(state, step=state.step + 1, step_started=now)
            events.append(f"step {state.step}: pause of {duration:g}s over")
            continue
        break
    return state, events


def promoted(state: RouteState, route: Route) -> RouteState:
    """All steps done: the canary takes everything. `active` records which version that is
    (blue-green keeps it for the color switched to), so that whoever reads this state
    without the config it was made with (`splitproxy check`, a restart on a new config)
    knows which version the release ended on (`rollout.release`)."""
    return replace(state, phase=PROMOTED, active=route.canary)


def next_step_is_weight(state: RouteState, route: Route) -> bool:
    """True when `advance` would now change weights (what a pre-step webhook gates)."""
    rollout = route.rollout
    if rollout is None or state.phase != PROGRESSING or state.step >= len(rollout.steps):
        return False
    return rollout.steps[state.step].set_weight is not None


# -- operator actions -------------------------------------------------------------------------
def abort(state: RouteState, reason: str, now: float, by: Actor) -> RouteState:
    return replace(state, phase=ABORTED, abort_reason=reason, aborted_at=now, aborted_by=by)


def promote(state: RouteState, route: Route, now: float, full: bool) -> RouteState:
    rollout = route.rollout
    if rollout is None or not rollout.steps:
        raise ActionError("this route has no rollout steps to promote")
    if state.phase in (ABORTED, PROMOTED):
        raise ActionError(f"rollout is {state.phase}")
    if full:
        return replace(promoted(state, route), step=len(rollout.steps), pause_reason=None,
                       step_started=now)
    if state.phase == PAUSED and state.pause_reason in (PauseReason.AWAIT_PROMOTE,
                                                        PauseReason.WAITING):
        # Past a `pause: {}`, or past a pause still waiting for evidence (the operator's
        # call, blind: the guard keeps judging the next step).
        return replace(state, phase=PROGRESSING, step=state.step + 1, pause_reason=None,
                       step_started=now)
    if state.phase == PROGRESSING and state.step < len(rollout.steps) \
            and rollout.steps[state.step].pause is not None:
        # Promote during a timed pause skips the rest of it, as Argo Rollouts does.
        return replace(state, step=state.step + 1, step_started=now)
    raise ActionError(f"nothing to promote: rollout is {state.phase}"
                      + (f" ({state.pause_reason})" if state.pause_reason else ""))


def retry(state: RouteState, route: Route, now: float, run: str) -> RouteState:
    """A new run of the same rollout from step 0; approvals and analysis of the aborted run
    do not carry over."""
    if state.phase != ABORTED:
        raise ActionError(f"only an aborted rollout can be retried (it is {state.phase})")
    fresh = start(route, now, run)
    # Blue/green: the retried switch is validated and watched again, with the same color to
    # fall back to.
    phase, reason = _first_phase(route, state.previous_active)
    return replace(fresh, previous_active=state.previous_active, checks=state.checks,
                   phase=phase, pause_reason=reason)


def switch_checked(state: RouteState, route: Route, now: float, all_down: bool,
                   passed: bool) -> tuple[RouteState, list[str]]:
    """Blue-green, while validating: the new color's pre-switch checks at one tick.
    `all_down`: none of its endpoints is up (all ejected); `passed`: the guard passed its
    preview traffic (or does not judge it). A color without a healthy endpoint holds the
    switch (aborted: the previous color keeps serving, `retry` checks again); after
    `pre_switch.duration`, a pass switches."""
    pre = route.pre_switch
    if not validating(state) or pre is None:
        return state, []
    if all_down:
        reason = (f"pre-switch: {route.active} has no healthy endpoint (all ejected); "
                  f"{state.previous_active} keeps serving")
        return abort(state, reason, now, Actor.GUARD), [f"switch held: {reason}"]
    if now - state.step_started < pre.duration or not passed:
        return state, []
    done = replace(state, phase=IDLE, pause_reason=None, step_started=now)
    return done, [f"pre-switch checks passed: switched from {state.previous_active} to "
                  f"{route.active}"]


def pause(state: RouteState, route: Route) -> RouteState:
    """Hold where it is. A rollout held by the deployment window or waiting for evidence may
    be paused too: it then stays paused, until `resume`."""
    held = (PauseReason.OUTSIDE_WINDOW, PauseReason.WAITING, PauseReason.NO_HEALTHY)
    if has_steps(route) and (state.phase == PROGRESSING
                             or (state.phase == PAUSED and state.pause_reason in held)):
        return replace(state, phase=PAUSED, pause_reason=PauseReason.MANUAL)
    what = f"{state.phase}: {state.pause_reason}" if state.pause_reason else state.phase
    raise ActionError(f"only a progressing rollout can be paused (it is {what})")


def resume(state: RouteState, now: float) -> RouteState:
    if state.phase != PAUSED or state.pause_reason != PauseReason.MANUAL:
        hint = ("the guard decides when it has the evidence; promote skips the wait (blind)"
                if state.pause_reason == PauseReason.WAITING
                else "the switch happens when its pre-switch checks pass; abort stops it"
                if state.pause_reason == PauseReason.VALIDATING
                else "use promote to pass a `pause: {}` step")
        raise ActionError(f"only a manually paused rollout resumes; {hint}")
    return replace(state, phase=PROGRESSING, pause_reason=None, step_started=now)
