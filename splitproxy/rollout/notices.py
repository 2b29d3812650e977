"""What a decided transition tells the outside world: the `Notify` effects and their payload.

Pure: (state before, state after, route, now) -> the notifications, in the order things
happened (resumed, steps done, the step now at, paused, aborted, switched, promoted). Only
the replica that made a decision notifies (`fold` calls this for decisions made here, never
for states adopted from another replica); the owner delivers them as tasks
(`control.webhooks`), so a slow or dead receiver holds nothing.

The payload (README: Notifications) is one JSON object; `format: slack` is rendered from it
by the sender.
"""

from __future__ import annotations

from typing import Any

from splitproxy.config.models import Route
from splitproxy.config.steps import Step, Webhook, WebhookEvent
from splitproxy.rollout import guard, machine
from splitproxy.rollout.events import Notify
from splitproxy.rollout.state import Actor, Phase, RouteState

E = WebhookEvent


def hooks_for(route: Route, event: WebhookEvent) -> tuple[Webhook, ...]:
    rollout = route.rollout
    return tuple(h for h in (rollout.webhooks if rollout else ()) if event in h.on)


def describe_step(step: Step) -> str:
    if step.set_weight is not None:
        return f"set_weight {step.set_weight}"
    if step.set_header_route is not None:
        return f"set_header_route {step.set_header_route.describe()}"
    if step.set_mirror is not None:
        return f"set_mirror {step.set_mirror.describe()}"
    assert step.pause is not None
    duration = step.pause.duration
    return "pause until promoted" if duration is None else f"pause {duration:g}s"


def payload(route: Route, state: RouteState, event: WebhookEvent,
            now: float | None = None, old: RouteState | None = None) -> dict[str, Any]:
    """The JSON every webhook gets (the pre-step gate too); `now` and `old`: of a
    transition, for its time, id and previous phase."""
    steps = route.rollout.steps if route.rollout else ()
    out: dict[str, Any] = {
        "event": str(event),
        "route": route.name,
        "run": state.run,
        "phase": str(state.phase),
        "step": state.step,
        "steps": len(steps),
        "weights": machine.weights(state, route),
        "reason": state.abort_reason or (str(state.pause_reason) if state.pause_reason
                                         else None),
        "revision": route.rollout.revision if route.rollout else None,
        "last_check": state.checks[-1] if state.checks else None,
    }
    if now is not None:
        out.update(id=f"{route.name}/{state.run}/{state.seq}/{event}", time=now,
                   previous_phase=str(old.phase) if old is not None else None,
                   step_detail=describe_step(steps[state.step]) if state.step < len(steps)
                   else None)
    return out


def notices(old: RouteState, new: RouteState, route: Route, now: float) -> list[Notify]:
    """The notifications of one decided transition from `old` to `new`."""
    out: list[Notify] = []
    steps = route.rollout.steps if route.rollout else ()
    same_run = new.run == old.run
    n = len(steps)

    def send(event: WebhookEvent, message: str, **extra: Any) -> None:
        if hooks := hooks_for(route, event):
            body = payload(route, new, event, now, old)
            out.append(Notify(event, hooks, {**body, "message": f"{route.name}: {message}",
                                             **extra}))

    if same_run and old.phase == Phase.PAUSED and new.phase == Phase.PROGRESSING:
        send(E.RESUMED, f"resumed at step {new.step + 1}/{n}")
    if same_run and new.step > old.step:
        for i in range(old.step + 1, new.step + 1):  # `step`: the number of the step done
            done = describe_step(steps[i - 1])
            send(E.POST_STEP, f"step {i}/{n} done ({done})", step=i, step_detail=done,
                 id=f"{route.name}/{new.run}/{new.seq}/{E.POST_STEP}/{i}")
    entered = (same_run and new.step > old.step) or (not same_run and n > 0)
    if entered and new.step < n and new.phase in (Phase.PROGRESSING, Phase.PAUSED):
        send(E.STEP_STARTED, f"step {new.step + 1}/{n} started ({describe_step(steps[new.step])})"
             f"; weights {_weights(machine.weights(new, route))}")
    if new.phase == Phase.PAUSED and (old.phase != Phase.PAUSED or not same_run
                                      or old.pause_reason != new.pause_reason):
        where = f" at step {new.step + 1}/{n}" if n else ""  # blue-green has no steps
        send(E.PAUSED, f"paused{where}: {new.pause_reason}")
    if new.phase == Phase.ABORTED and (old.phase != Phase.ABORTED or not same_run):
        by_guard = new.aborted_by == Actor.GUARD
        send(E.ABORT, f"ABORTED: {new.abort_reason}; weights "
             f"{_weights(machine.weights(new, route))}",
             aborted_by=str(new.aborted_by) if new.aborted_by else None,
             verdict=_verdict(new, route) if by_guard else None)
    before, after = machine.serving(old), machine.serving(new)
    if route.strategy == "blue-green" and before and after and before != after:
        back = " (switched back)" if new.phase == Phase.ABORTED else ""
        send(E.SWITCHED, f"switched from {before} to {after}{back}",
             **{"from": before, "to": after})
    if new.phase == Phase.PROMOTED and (old.phase != Phase.PROMOTED or not same_run):
        send(E.PROMOTED, f"promoted; weights {_weights(machine.weights(new, route))}")
    return out


def _weights(weights: dict[str, float]) -> str:
    return ", ".join(f"{v} {w}" for v, w in weights.items())


def _verdict(state: RouteState, route: Route) -> dict[str, Any] | None:
    """The numbers of the test that failed (as /status shows them)."""
    report = guard.report(state, route)
    if report is None or report.get("decided_by") is None:
        return None
    for entry in (*report["tests"], *report["metrics"]):
        if entry.get("key") == report["decided_by"]:
            return dict(entry)
    return None
