"""A route's rollout state: the decision every replica agrees on.

`RouteState` is immutable; the fold (`rollout.fold`) makes each successor. The shared part
(`decision`) is what the state stores hold and replicas compare-and-set. The guard's evidence
is part of it: one replica (the lease holder) judges, every replica shows and keeps what it
judged, and whoever takes over continues the same tests instead of starting them again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

FORMAT = 2  # of a stored state; format 1 (splitproxy 0.1) is read and migrated


class Phase(StrEnum):
    IDLE = "idle"  # no steps: the config's weights serve
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"  # final for its run: the guard reports but no longer reverts
    ABORTED = "aborted"


class PauseReason(StrEnum):
    """Why a rollout is paused; only some resume by themselves."""

    MANUAL = "manual"
    AWAIT_PROMOTE = "waiting for promote"
    OUTSIDE_WINDOW = "outside deployment window"
    # A timed pause is over but the guard has not passed the step (advance: on-pass): it
    # goes on at the first check that passes.
    WAITING = "waiting for evidence"
    # Blue-green: `active` changed and the new color is being checked (`pre_switch`); the
    # previous color serves until the checks pass (a failed check aborts: held).
    VALIDATING = "validating the new color"
    # The next weight step would send traffic to a canary without a healthy endpoint (all
    # ejected, or down on their active check): it goes on once one is healthy again.
    NO_HEALTHY = "no healthy endpoint"


# Pause reasons of older states, read as today's.
_OLD_REASONS = {"inconclusive checks": PauseReason.WAITING}


class Actor(StrEnum):
    """Who aborted: an operator's abort survives even a race with a promotion."""

    OPERATOR = "operator"
    GUARD = "guard"


@dataclass(frozen=True, slots=True)
class Gate:
    """This replica's pre-step gate for one step of one run; never stored or shared, so an
    approval cannot outlive its run (a retry asks again)."""

    run: str
    step: int
    asking: bool = True
    approved: bool = False
    retry_at: float = 0.0  # wall clock: after a refusal, ask again from then
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class RouteState:
    identity: str  # what is being rolled out (`rollout.identity`); another one starts over
    run: str  # this attempt at it: a start, a retry and a blue-green switch each get one
    phase: Phase = Phase.IDLE
    step: int = 0  # index of the step being carried out (== len(steps) when done)
    step_started: float = 0.0  # wall clock, so a pause survives a restart
    weight: float | None = None  # canary weight set by the last set_weight step (a whole
    # number is an int, so states of integer weights are stored as before)
    pause_reason: PauseReason | None = None
    abort_reason: str | None = None
    aborted_at: float | None = None
    aborted_by: Actor | None = None
    # The version this run put all traffic on: blue-green's color switched to; a canary's,
    # once promoted (read by `rollout.release` when the next rollout starts).
    active: str | None = None
    previous_active: str | None = None  # blue-green: the color that served before this run
    run_started: float = 0.0
    # The endpoints at the last decision: told apart from the config's by `splitproxy check`.
    endpoints: dict[str, tuple[str, ...]] = field(default_factory=dict)
    seq: int = 0  # counts decisions; a store accepts a write only on top of the one it holds
    # The guard's sequential tests for this run and step (`rollout.guard`: JSON; restarted
    # at each step and run), part of the decision: shared and persisted.
    evidence: dict[str, Any] = field(default_factory=dict)
    checks: tuple[dict[str, Any], ...] = ()  # the guard's last checks, newest last, bounded
    gate: Gate | None = None  # this replica's, never stored
    legacy_revision: str | None = None  # read from format 1: the revision hash it had

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["gate"], data["legacy_revision"]
        data["endpoints"] = {v: list(eps) for v, eps in self.endpoints.items()}
        data["format"] = FORMAT
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RouteState:
        """A stored state of either format; raises KeyError, TypeError or ValueError when it
        is not one."""
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {type(data).__name__}")
        data = dict(data)
        # Counters of the window-based guard (splitproxy 0.2): no meaning any more.
        data.pop("failures", None)
        data.pop("inconclusive", None)
        if data.pop("format", 1) == 1:
            # Format 1 named its identity `revision`, a hash that counted endpoints and weights;
            # `rollout.migrate` matches it against the config's with the old hash function.
            data["legacy_revision"] = str(data.pop("revision"))
            data.setdefault("identity", "")
            data.setdefault("run", "")
        known = {f.name for f in fields(cls)} - {"gate"}
        unknown = set(data) - known
        if unknown:
            raise KeyError(f"unknown fields {sorted(unknown)}")
        data["phase"] = Phase(data.get("phase", Phase.IDLE))
        if data.get("pause_reason") is not None:
            reason = data["pause_reason"]
            data["pause_reason"] = _OLD_REASONS.get(reason) or PauseReason(reason)
        if data.get("aborted_by") is not None:
            data["aborted_by"] = Actor(data["aborted_by"])
        data["checks"] = tuple(data.get("checks", ()))
        data["endpoints"] = {str(v): tuple(eps) for v, eps in data.get("endpoints", {}).items()}
        for name in ("step", "seq"):
            if not isinstance(data.get(name, 0), int):
                raise TypeError(f"{name} must be an integer")
        if not isinstance(data.get("evidence", {}), dict):
            raise TypeError("evidence must be an object")
        return cls(**data)


def decision(state: RouteState) -> tuple[Any, ...]:
    """The part every replica must agree on (a change is a decision: persisted, seq + 1).
    A check that changed nothing but the guard's count of checks (no traffic) is none."""
    evidence = {k: v for k, v in state.evidence.items() if k != "checks"}
    return (state.identity, state.run, state.phase, state.step, state.step_started,
            state.weight, state.pause_reason, state.abort_reason, state.aborted_at,
            state.aborted_by, state.active, state.previous_active, evidence)


def _tests_of(evidence: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(evidence.get(k) for k in ("run", "step", "segment", "key"))


def with_guard_of(theirs: RouteState, mine: RouteState) -> RouteState:
    """`theirs` decision, keeping this replica's gate within the same run and step, and its
    evidence where it is further along in the same tests (a write of ours that lost a race
    to another replica's action must not roll the tests back)."""
    gate = mine.gate if (theirs.run, theirs.step) == (mine.run, mine.step) else None
    evidence, checks = theirs.evidence, theirs.checks
    if mine.evidence and _tests_of(mine.evidence) == _tests_of(theirs.evidence) \
            and mine.evidence.get("checks", 0) > theirs.evidence.get("checks", 0):
        evidence, checks = mine.evidence, mine.checks
    return replace(theirs, evidence=evidence, checks=checks, gate=gate)
