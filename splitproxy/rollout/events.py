"""What may happen to a route's rollout (events) and what the owner must do after (effects).

The owner (`splitproxy.control.engine`) applies events one at a time, in order, with
`fold.apply`, then carries out the effects; nothing is awaited between reading a state and
writing its successor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from splitproxy.config.steps import Webhook, WebhookEvent
from splitproxy.rollout.custom import MetricSample
from splitproxy.rollout.state import Phase, RouteState
from splitproxy.rollout.tally import Tally

__all__ = ["WebhookEvent"]


class Action(StrEnum):
    """What an operator may do; the admin API never sets weights."""

    PROMOTE = "promote"
    ABORT = "abort"
    RETRY = "retry"
    PAUSE = "pause"
    RESUME = "resume"


# -- events -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Restore:
    """Start-up (or a route added by a reload): what the store holds for the route.

    `stored`: the state kept for the route's identity; `previous`: the latest other state of
    the route (another identity, or format 1), for blue-green's color and for migration."""

    stored: RouteState | None = None
    previous: RouteState | None = None


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """A reload: `fold.apply` gets the route as newly configured."""


@dataclass(frozen=True, slots=True)
class Act:
    action: Action
    full: bool = False  # promote: to the end
    reason: str | None = None  # abort


@dataclass(frozen=True, slots=True)
class Tick:
    """The timer: due steps, window changes, gates, pre-switch checks. `leader`: this replica
    keeps the time; `down`: the (route, version) pairs with no endpoint up (all ejected)."""

    leader: bool
    down: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class Measurement:
    """One reading of a route's counters: exact counts per version since the previous one,
    tagged with the run and step it was started in (a reading of another run or step decides
    nothing). `tallies` is None when the reading failed (`error` says why): inconclusive,
    never a failure. `leader`: this replica judges (only the lease holder does)."""

    run: str
    step: int
    tallies: Mapping[str, Tally] | None = None
    error: str | None = None
    leader: bool = True
    # `analysis.metrics`, by name: each read on its own (a failed query fails only its metric).
    custom: Mapping[str, MetricSample] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GateAnswer:
    """The pre-step webhooks answered for `step` of `run` (for that step of that run only).
    `leader` as in `Tick`: an approval lets the step go at once."""

    run: str
    step: int
    ok: bool
    detail: str
    leader: bool = False


@dataclass(frozen=True, slots=True)
class PeerUpdate:
    """Another replica's state for the route, from the shared store. `lost_race`: it won a
    compare-and-set against our own write."""

    state: RouteState
    lost_race: bool = False


Event = Restore | Reconfigure | Act | Tick | Measurement | GateAnswer | PeerUpdate


# -- effects ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Persist:
    """Write the state (compare-and-set on what the store holds; retried until it lands)."""

    state: RouteState


@dataclass(frozen=True, slots=True)
class Stored:
    """The store holds `seq` for `identity` (a restored or adopted state)."""

    identity: str
    seq: int


@dataclass(frozen=True, slots=True)
class Retire:
    """The route left `identity`: its stored state may expire."""

    identity: str


@dataclass(frozen=True, slots=True)
class Rebuild:
    """The weights or the run changed: swap in a new routing table."""


@dataclass(frozen=True, slots=True)
class Log:
    level: Literal["info", "warning"]
    message: str


@dataclass(frozen=True, slots=True)
class PhaseChanged:
    old: Phase
    new: Phase


@dataclass(frozen=True, slots=True)
class Checked:
    result: str


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run started here or elsewhere: analysis looks at traffic from now on only."""

    run: str


@dataclass(frozen=True, slots=True)
class Notify:
    event: WebhookEvent
    hooks: tuple[Webhook, ...]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AskGate:
    run: str
    step: int
    hooks: tuple[Webhook, ...]
    payload: dict[str, Any] = field(default_factory=dict)


Effect = (Persist | Stored | Retire | Rebuild | Log | PhaseChanged | Checked | NewRun | Notify
          | AskGate)
