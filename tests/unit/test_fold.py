"""The fold of rollout events, one pure call each: (state, event, route, now) -> (state, effects).

No clock, no sockets: runs, times and readings are plain values."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from splitproxy.config.models import Route
from splitproxy.rollout import (
    Actor,
    PauseReason,
    Phase,
    RouteState,
    WebhookEvent,
    identity,
    machine,
)
from splitproxy.rollout.events import (
    Act,
    Action,
    AskGate,
    Effect,
    Event,
    GateAnswer,
    Log,
    Measurement,
    NewRun,
    Notify,
    PeerUpdate,
    Persist,
    Rebuild,
    Reconfigure,
    Restore,
    Retire,
    Stored,
    Tick,
)
from splitproxy.rollout.fold import GATE_RETRY, apply
from splitproxy.rollout.tally import Tally

T0 = 1_717_380_000.0
STEPS: list[Any] = [{"set_weight": 20}, {"pause": "30s"}, {"set_weight": 50}, {"pause": {}}]
ANALYSIS = {"max_error_rate": 0.01}
GATE = {"on": "pre-step", "url": "http://127.0.0.1:7000/gate"}
POST = {"on": "post-step", "url": "http://127.0.0.1:7000/post"}
NOTIFY = [{"on": "abort", "url": "http://127.0.0.1:7000/n"},
          {"on": "promoted", "url": "http://127.0.0.1:7000/n"}]


def make(steps: list[Any] | None = STEPS, hooks: list[dict[str, str]] | None = None,
         **kw: Any) -> Route:
    data: dict[str, Any] = {
        "name": "shop",
        "versions": {"stable": {"endpoints": ["http://127.0.0.1:9001"]},
                     "canary": {"endpoints": ["http://127.0.0.1:9002"]}},
        "weights": {"stable": 100, "canary": 0},
        "analysis": ANALYSIS,
    }
    if steps is not None:
        data["rollout"] = {"revision": "v1", "steps": steps, "webhooks": hooks or []}
    data.update(kw)
    return Route.model_validate(data)


ROUTE = make()


def run(state: RouteState | None, *events: Event, route: Route = ROUTE, now: float = T0,
        new_run: str = "r2") -> tuple[RouteState, list[Effect]]:
    """Applies `events` in order; the effects of the last one."""
    effects: list[Effect] = []
    for event in events:
        state, effects = apply(state, event, route, now, new_run)
    assert state is not None
    return state, effects


def fresh(route: Route = ROUTE) -> RouteState:
    return run(None, Restore(), route=route, new_run="r1")[0]


def at_step_1(route: Route = ROUTE) -> RouteState:
    return run(fresh(route), Tick(leader=True), route=route)[0]


def reading(state: RouteState, errors: int, *, requests: int = 100, run_id: str | None = None,
            step: int | None = None) -> Measurement:
    """One tick's exact counts: the canary's `errors` of `requests`, a clean stable."""
    return Measurement(run_id or state.run, state.step if step is None else step,
                       {"canary": Tally(requests, errors, requests),
                        "stable": Tally(requests, 0, requests)})


def feed(state: RouteState, errors: int, ticks: int, *, requests: int = 100,
         start: float = T0, route: Route = ROUTE) -> tuple[RouteState, list[Effect], int]:
    """`ticks` readings one second apart (the guard's slices need time as well as requests);
    stops early at an abort. Returns the state, the last effects and the ticks used."""
    effects: list[Effect] = []
    for i in range(1, ticks + 1):
        state, effects = run(state, reading(state, errors, requests=requests), route=route,
                             now=start + i)
        if state.phase == Phase.ABORTED:
            return state, effects, i
    return state, effects, ticks


def kinds(effects: list[Effect]) -> list[str]:
    return [type(e).__name__ for e in effects]


# --------------------------------------------------------------------------- decisions


def test_a_fresh_rollout_is_a_decision_persisted_with_nothing_stored_before() -> None:
    state, effects = run(None, Restore(), new_run="r1")
    assert (state.phase, state.run, state.seq, state.identity) == (
        Phase.PROGRESSING, "r1", 0, identity(ROUTE))
    assert Persist(state) in effects and NewRun("r1") in effects


def test_each_decision_bumps_seq_and_is_persisted_so_is_new_evidence() -> None:
    state = fresh()
    stepped, effects = run(state, Tick(leader=True))
    assert (stepped.step, stepped.seq) == (1, state.seq + 1)
    assert Persist(stepped) in effects and Rebuild() in effects
    # The guard's evidence is shared with every replica: new counts are a decision ...
    checked, effects = run(stepped, reading(stepped, errors=0), now=T0 + 1)
    assert (checked.seq, len(checked.checks)) == (stepped.seq + 1, 1)
    assert Persist(checked) in effects
    # ... a check that saw no traffic is not.
    idle, effects = run(checked, reading(checked, errors=0, requests=0), now=T0 + 2)
    assert (idle.seq, len(idle.checks)) == (checked.seq, 2)
    assert "Persist" not in kinds(effects)


def test_only_the_leader_keeps_the_time() -> None:
    state = fresh()
    assert run(state, Tick(leader=False))[0] == state


# --------------------------------------------------------------------------- measurements


def test_a_reading_of_an_earlier_run_is_recorded_but_decides_nothing() -> None:
    state = at_step_1()
    old = "r0"
    for i in range(10):
        state, _ = run(state, reading(state, errors=100, run_id=old), now=T0 + i)
    assert (state.phase, state.evidence) == (Phase.PROGRESSING, {})
    assert [(c["result"], c["run"], c["stale"]) for c in state.checks] == \
        [("inconclusive", old, True)] * 10


def test_a_failing_canary_of_the_current_run_is_aborted_and_the_reason_says_why() -> None:
    state, effects, ticks = feed(at_step_1(), errors=100, ticks=20)
    # 100% errors against 1%: each 3 s slice multiplies the evidence by up to ~90.
    assert (state.phase, state.aborted_by) == (Phase.ABORTED, Actor.GUARD)
    assert ticks <= 9
    assert machine.weights(state, ROUTE) == {"stable": 100, "canary": 0}
    assert Persist(state) in effects and Rebuild() in effects
    assert any(isinstance(e, Log) and e.level == "warning" for e in effects)
    reason = state.abort_reason or ""
    assert reason.startswith("guard: canary error rate 100% [") and "> 1%: e=" in reason
    assert f"(n={ticks * 100}, {ticks * 100} errors)" in reason


IDLE = make(steps=None, weights={"stable": 90, "canary": 10})
SATURDAYS = make(rollout={"revision": "v1", "steps": STEPS, "window": {"days": ["sat"]}},
                 weights={"stable": 90, "canary": 10})  # outside: the configured weights serve


def _given(kind: str) -> tuple[RouteState, Route]:
    if kind == "idle":
        return fresh(IDLE), IDLE
    if kind == "outside-window":
        return at_step_1(SATURDAYS), SATURDAYS
    state = at_step_1()
    if kind == "paused":
        state = run(state, Act(Action.PAUSE))[0]
    elif kind == "waiting-for-evidence":
        state = run(state, Tick(leader=True), now=T0 + 30)[0]
    elif kind == "waiting-for-promote":
        state = run(state, Act(Action.PROMOTE))[0]
        state = run(state, Tick(leader=True))[0]
    return state, ROUTE


@pytest.mark.parametrize("kind", ["progressing", "paused", "waiting-for-evidence",
                                  "waiting-for-promote", "outside-window", "idle"])
def test_the_guard_aborts_in_every_phase_but_promoted(kind: str) -> None:
    state, route = _given(kind)
    expected = {"paused": PauseReason.MANUAL, "waiting-for-evidence": PauseReason.WAITING,
                "waiting-for-promote": PauseReason.AWAIT_PROMOTE,
                "outside-window": PauseReason.OUTSIDE_WINDOW}.get(kind)
    assert state.pause_reason == expected
    state, _, _ = feed(state, errors=100, ticks=20, start=T0 + 40, route=route)
    assert state.phase == Phase.ABORTED
    assert machine.weights(state, route) == {"stable": 100, "canary": 0}


def test_a_reading_that_failed_is_inconclusive() -> None:
    state = at_step_1()
    failed = Measurement(state.run, state.step, None, "timed out")
    state, _ = run(state, failed)
    assert (state.checks[-1]["result"], state.checks[-1]["error"]) == ("inconclusive",
                                                                       "timed out")
    assert state.phase == Phase.PROGRESSING


def test_a_reading_of_another_replica_that_lost_the_lease_decides_nothing() -> None:
    state = at_step_1()
    late = replace(reading(state, errors=100), leader=False)
    assert run(state, late) == (state, [])


def test_a_promoted_run_is_final_the_guard_reports_but_does_not_revert() -> None:
    state = run(at_step_1(), Act(Action.PROMOTE, full=True))[0]
    assert state.phase == Phase.PROMOTED
    state, _, _ = feed(state, errors=100, ticks=12)
    assert state.phase == Phase.PROMOTED
    assert state.checks[-1]["result"] == "fail"
    assert machine.weights(state, ROUTE) == {"stable": 0, "canary": 100}


def test_evidence_restarts_with_the_step_and_spends_a_new_share_only_if_it_could_fail() -> None:
    state = at_step_1()  # canary at 20%, step 1 (pause 30s)
    state, _, _ = feed(state, errors=0, ticks=2)  # 200 requests, no slice closed yet
    assert (state.evidence["step"], state.evidence["segment"]) == (1, 0)
    moved = run(state, Act(Action.PROMOTE))[0]  # skips the pause ...
    moved = run(moved, Tick(leader=True), now=T0 + 2.5)[0]  # ... step 3, canary at 50%
    assert moved.step == 3 and moved.evidence["step"] == 1  # kept until the next check
    moved, _ = run(moved, reading(moved, errors=0), now=T0 + 3)
    # A segment that never closed a slice could not have failed: its share is reused.
    assert (moved.evidence["step"], moved.evidence["segment"]) == (3, 0)
    assert moved.evidence["tests"]["canary:error_rate"]["trials"] == 100


# ------------------------------------------------------------------------- steps wait for evidence


def test_a_timed_pause_without_traffic_waits_for_evidence() -> None:
    state = at_step_1()
    state, _, _ = feed(state, errors=0, ticks=40, requests=0)
    state, effects = run(state, Tick(leader=True), now=T0 + 41)
    assert (state.phase, state.pause_reason, state.step) == (
        Phase.PAUSED, PauseReason.WAITING, 1)
    assert Persist(state) in effects
    assert machine.weights(state, ROUTE)["canary"] == 20  # held, never blind


def test_a_waiting_pause_goes_on_at_the_check_that_passes() -> None:
    state = at_step_1()
    state, _ = run(state, Tick(leader=True), now=T0 + 30)
    assert state.pause_reason == PauseReason.WAITING
    # 100 clean requests a second: "under 1%" needs about 400 clean requests.
    for i in range(1, 30):
        state, _ = run(state, reading(state, errors=0), now=T0 + 30 + i)
        if state.step != 1:
            break
    assert 3 <= i <= 8
    assert (state.step, state.pause_reason) == (3, PauseReason.AWAIT_PROMOTE)  # the next pause
    assert machine.weights(state, ROUTE)["canary"] == 50
    assert state.checks[-1]["result"] == "pass"


def test_on_timer_advances_on_time_alone() -> None:
    route = make(analysis={**ANALYSIS, "advance": "on-timer"})
    state = at_step_1(route)
    state, _ = run(state, Tick(leader=True), route=route, now=T0 + 30)
    assert (state.step, machine.weights(state, route)["canary"]) == (3, 50)


def test_a_step_without_analysis_ends_on_time() -> None:
    route = make(analysis=None)
    state = at_step_1(route)
    state, _ = run(state, Tick(leader=True), route=route, now=T0 + 30)
    assert state.step == 3


def test_promote_passes_a_pause_waiting_for_evidence_and_resume_does_not() -> None:
    state = run(at_step_1(), Tick(leader=True), now=T0 + 30)[0]
    assert state.pause_reason == PauseReason.WAITING
    with pytest.raises(machine.ActionError, match="promote skips the wait"):
        run(state, Act(Action.RESUME))
    paused = run(state, Act(Action.PAUSE))[0]
    assert paused.pause_reason == PauseReason.MANUAL
    promoted = run(state, Act(Action.PROMOTE))[0]
    assert (promoted.phase, promoted.step) == (Phase.PROGRESSING, 2)


def test_a_state_paused_by_the_old_inconclusive_limit_reads_as_waiting() -> None:
    data = {**at_step_1().to_json(), "phase": "paused", "pause_reason": "inconclusive checks",
            "failures": 1, "inconclusive": 5}
    state = RouteState.from_json(data)
    assert state.pause_reason == PauseReason.WAITING


# --------------------------------------------------------------------------- gates


GATED = make(hooks=[GATE])


def test_a_weight_step_asks_its_gate_once_and_goes_on_approval() -> None:
    state = fresh(GATED)
    asked, effects = run(state, Tick(leader=True), route=GATED)
    assert (asked.step, [type(e) for e in effects]) == (0, [AskGate])
    ask = effects[0]
    assert isinstance(ask, AskGate) and (ask.run, ask.step) == (state.run, 0)
    again, effects = run(asked, Tick(leader=True), route=GATED)
    assert (again.step, effects) == (0, [])  # still waiting: not asked twice
    done, _ = run(again, GateAnswer(state.run, 0, True, "ok", leader=True), route=GATED)
    assert (done.step, machine.weights(done, GATED)["canary"]) == (1, 20)


def test_a_refusal_holds_the_step_and_asks_again_later() -> None:
    state = run(fresh(GATED), Tick(leader=True), route=GATED)[0]
    held, _ = run(state, GateAnswer(state.run, 0, False, "503"), route=GATED)
    assert held.gate is not None and held.gate.detail == "503"
    assert run(held, Tick(leader=True), route=GATED, now=T0 + GATE_RETRY - 0.1)[1] == []
    effects = run(held, Tick(leader=True), route=GATED, now=T0 + GATE_RETRY)[1]
    assert [type(e) for e in effects] == [AskGate]


def test_a_gate_approval_does_not_carry_over_into_a_retry() -> None:
    state = run(fresh(GATED), Tick(leader=True), route=GATED)[0]  # asking for run r1, step 0
    aborted = run(state, Act(Action.ABORT), route=GATED)[0]
    retried = run(aborted, Act(Action.RETRY), route=GATED, new_run="r2")[0]
    assert retried.run == "r2"
    # The answer to r1's question arrives after the retry: it is spent with r1.
    late, _ = run(retried, GateAnswer("r1", 0, True, "ok", leader=False), route=GATED)
    assert (late.step, late.gate) == (0, None)
    asked, effects = run(late, Tick(leader=True), route=GATED)
    assert [(type(e), getattr(e, "run", None)) for e in effects] == [(AskGate, "r2")]
    assert asked.step == 0
    assert run(asked, GateAnswer("r1", 0, True, "ok", leader=True), route=GATED)[0] == asked


# --------------------------------------------------------------------------- other replicas


def test_a_newer_state_from_another_replica_is_adopted_without_a_write() -> None:
    mine = at_step_1()
    theirs = replace(mine, step=3, phase=Phase.PAUSED, seq=mine.seq + 2)
    new, effects = run(mine, PeerUpdate(theirs))
    assert (new.step, new.seq) == (3, theirs.seq)
    assert Stored(theirs.identity, theirs.seq) in effects
    assert "Persist" not in kinds(effects) and "Notify" not in kinds(effects)
    assert run(new, PeerUpdate(replace(theirs, step=1)))[0] == new  # an older one: ignored


def test_a_retry_adopted_from_another_replica_starts_a_fresh_guard() -> None:
    mine, _, _ = feed(at_step_1(), errors=0, ticks=3)
    assert mine.evidence["run"] == mine.run
    theirs = replace(mine, run="r9", step=0, seq=mine.seq + 2, evidence={}, checks=())
    new, effects = run(mine, PeerUpdate(theirs))
    assert (new.run, new.evidence) == ("r9", {})
    assert NewRun("r9") in effects and Rebuild() in effects  # the run is in the cookie


def test_evidence_further_along_is_kept_when_another_replica_wins_a_race() -> None:
    base, _, _ = feed(at_step_1(), errors=0, ticks=2)
    mine, _ = run(base, reading(base, errors=0), now=T0 + 3)  # our write of this lost
    theirs = replace(base, phase=Phase.PAUSED, pause_reason=PauseReason.MANUAL,
                     seq=mine.seq)  # an operator's pause, decided on top of `base`
    new, _ = run(mine, PeerUpdate(theirs, lost_race=True))
    assert new.pause_reason == PauseReason.MANUAL
    assert new.evidence == mine.evidence  # not rolled back to `base`'s


@pytest.mark.parametrize(
    ("by", "winner_phase", "kept"),
    [
        (Actor.OPERATOR, Phase.PROMOTED, True),  # an operator's abort beats a promotion
        (Actor.GUARD, Phase.PROMOTED, False),  # promoted is final for the guard
        (Actor.GUARD, Phase.PAUSED, True),
        (Actor.OPERATOR, Phase.PROGRESSING, True),
    ],
)
def test_an_abort_that_lost_a_race_goes_on_top_of_the_winner(
    by: Actor, winner_phase: Phase, kept: bool,
) -> None:
    base = at_step_1()
    mine = replace(machine.abort(base, "bad", T0, by), seq=base.seq + 1)
    theirs = replace(base, phase=winner_phase, seq=base.seq + 1)
    new, effects = run(mine, PeerUpdate(theirs, lost_race=True))
    if kept:
        assert (new.phase, new.abort_reason, new.seq) == (Phase.ABORTED, "bad", theirs.seq + 1)
        assert Persist(new) in effects
    else:
        assert (new.phase, new.seq) == (winner_phase, theirs.seq)
        assert "Persist" not in kinds(effects)


def test_news_of_another_identity_is_not_ours() -> None:
    mine = at_step_1()
    theirs = replace(mine, identity="other", seq=99, phase=Phase.ABORTED)
    assert run(mine, PeerUpdate(theirs)) == (mine, [])


# --------------------------------------------------------------------------- reloads


def test_an_endpoint_edit_keeps_the_rollout_an_abort_included() -> None:
    aborted = run(at_step_1(), Act(Action.ABORT, reason="bad"))[0]
    scaled = make(versions={"stable": {"endpoints": ["http://127.0.0.1:9001",
                                                     "http://127.0.0.1:9011"]},
                            "canary": {"endpoints": ["http://127.0.0.1:9012"]}},
                  weights={"stable": 50, "canary": 50})
    assert run(aborted, Reconfigure(), route=scaled) == (aborted, [])


def test_a_new_revision_is_a_new_run_and_the_old_state_may_expire() -> None:
    aborted = run(at_step_1(), Act(Action.ABORT))[0]
    v2 = make(rollout={"revision": "v2", "steps": STEPS})
    new, effects = run(aborted, Reconfigure(), route=v2, new_run="r7")
    assert (new.phase, new.run, new.seq, new.abort_reason) == (Phase.PROGRESSING, "r7", 0, None)
    assert Retire(aborted.identity) in effects and Persist(new) in effects


def test_promoted_endpoints_changed_without_a_revision_is_logged() -> None:
    promoted = run(at_step_1(), Act(Action.PROMOTE, full=True))[0]
    moved = make(versions={"stable": {"endpoints": ["http://127.0.0.1:9001"]},
                           "canary": {"endpoints": ["http://127.0.0.1:9099"]}})
    new, effects = run(promoted, Reconfigure(), route=moved)
    assert new == promoted
    assert [e.level for e in effects if isinstance(e, Log)] == ["warning"]


def blue_green(active: str) -> Route:
    return make(steps=None, strategy="blue-green", weights=None, active=active,
                versions={"blue": {"endpoints": ["http://127.0.0.1:9001"]},
                          "green": {"endpoints": ["http://127.0.0.1:9002"]}})


def test_a_blue_green_switch_knows_the_color_that_served_even_after_a_restart() -> None:
    before = fresh(blue_green("blue"))
    # At start-up the stored state is of the old identity: it comes as `previous`.
    switched = run(None, Restore(None, before), route=blue_green("green"), new_run="r2")[0]
    assert (switched.active, switched.previous_active, switched.run) == ("green", "blue", "r2")
    # Switched back by the guard, then switched again while down: blue still served last.
    aborted = machine.abort(switched, "bad", T0, Actor.GUARD)
    again = run(None, Restore(None, aborted), route=blue_green("green"), new_run="r3")[0]
    assert again.previous_active == "blue"


def test_restore_keeps_a_stored_abort() -> None:
    aborted = run(at_step_1(), Act(Action.ABORT))[0]
    restored, effects = run(None, Restore(aborted, None))
    assert restored == aborted
    assert Stored(aborted.identity, aborted.seq) in effects
    assert "Persist" not in kinds(effects)


# --------------------------------------------------------------------------- notifications


def test_post_step_is_sent_for_every_step_passed_by_the_maker_only() -> None:
    route = make(hooks=[POST, *NOTIFY], analysis=None)  # steps end on time
    state = fresh(route)
    stepped, effects = run(state, Tick(leader=True), route=route)
    sent = [e for e in effects if isinstance(e, Notify)]
    assert [(e.event, e.payload["step"]) for e in sent] == [(WebhookEvent.POST_STEP, 1)]
    assert sent[0].payload["weights"] == {"stable": 80, "canary": 20}
    later = run(stepped, Tick(leader=True), route=route, now=T0 + 30)
    assert [(e.event, e.payload["step"]) for e in later[1] if isinstance(e, Notify)] == [
        (WebhookEvent.POST_STEP, 2), (WebhookEvent.POST_STEP, 3)]
    adopted = run(stepped, PeerUpdate(later[0]), route=route)[1]
    assert "Notify" not in kinds(adopted)


def test_abort_and_promoted_notify_once_with_the_reason() -> None:
    route = make(hooks=NOTIFY)
    aborted, effects = run(at_step_1(route), Act(Action.ABORT, reason="x"), route=route)
    [sent] = [e for e in effects if isinstance(e, Notify)]
    assert (sent.event, sent.payload["reason"], sent.payload["run"]) == (
        WebhookEvent.ABORT, "manual: x", aborted.run)
