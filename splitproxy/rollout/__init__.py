"""Rollouts, pure: a route's state, its transitions, and the fold of events into it.

No clock, no I/O, no asyncio: `now` and fresh run ids are arguments. The owner that applies
events in order and carries out their effects is `splitproxy.control.engine`.

- `state`: `RouteState`, phases and pause reasons, what replicas share (`decision`).
- `identity`: what a rollout is (and the format-1 hash, to migrate old state).
- `machine`: transitions (start, advance, abort, promote, retry, pause, resume) and weights.
- `schedule`: deployment windows.
- `events`: events in, effects out; `fold.apply` maps one to the other.
- `guard`: the sequential tests: what is judged, the evidence per step, the verdicts;
  `custom` and `gauges`: custom metrics (`analysis.metrics`) as tests.
- `notices`: what each decided transition notifies (webhooks, Slack).
"""

from splitproxy.rollout.events import Action, WebhookEvent
from splitproxy.rollout.identity import endpoints, identity, legacy_revision
from splitproxy.rollout.machine import (
    ActionError,
    abort,
    advance,
    effective_active,
    has_steps,
    next_step_is_weight,
    pause,
    promote,
    resume,
    retry,
    serving,
    start,
    weights,
)
from splitproxy.rollout.schedule import in_window
from splitproxy.rollout.state import (
    FORMAT,
    Actor,
    Gate,
    PauseReason,
    Phase,
    RouteState,
    decision,
)

PHASES = tuple(Phase)

__all__ = [
    "FORMAT",
    "PHASES",
    "Action",
    "ActionError",
    "Actor",
    "Gate",
    "PauseReason",
    "Phase",
    "RouteState",
    "WebhookEvent",
    "abort",
    "advance",
    "decision",
    "effective_active",
    "endpoints",
    "has_steps",
    "identity",
    "in_window",
    "legacy_revision",
    "next_step_is_weight",
    "pause",
    "promote",
    "resume",
    "retry",
    "serving",
    "start",
    "weights",
]
