"""Notifications for every transition (`rollout.notices`), one pure fold call each: which
events a decision sends, in which order, with which payload; and the webhook settings that
subscribe to them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from splitproxy.config.models import Route
from splitproxy.config.steps import NOTIFICATIONS, Webhook, WebhookEvent, WebhookFormat
from splitproxy.rollout import Phase, RouteState
from splitproxy.rollout.events import (
    Act,
    Action,
    Effect,
    Event,
    Measurement,
    Notify,
    PeerUpdate,
    Reconfigure,
    Restore,
    Tick,
)
from splitproxy.rollout.fold import apply
from splitproxy.rollout.tally import Tally

T0 = 1_717_380_000.0
E = WebhookEvent
ALL = [{"on": "all", "url": "http://127.0.0.1:7000/n"}]
STEPS: list[Any] = [{"set_weight": 20}, {"pause": "30s"}, {"set_weight": 50}, {"pause": {}}]


def make(steps: list[Any] | None = STEPS, hooks: list[dict[str, Any]] | None = None,
         **kw: Any) -> Route:
    data: dict[str, Any] = {
        "name": "shop",
        "versions": {"stable": {"endpoints": ["http://127.0.0.1:9001"]},
                     "canary": {"endpoints": ["http://127.0.0.1:9002"]}},
        "weights": {"stable": 100, "canary": 0},
        "analysis": {"max_error_rate": 0.01},
        "rollout": {"revision": "v1", "steps": steps or [], "webhooks": hooks or ALL},
    }
    data.update(kw)
    return Route.model_validate(data)


ROUTE = make()


def run(state: RouteState | None, *events: Event, route: Route = ROUTE, now: float = T0,
        new_run: str = "r2") -> tuple[RouteState, list[Effect]]:
    effects: list[Effect] = []
    for event in events:
        state, effects = apply(state, event, route, now, new_run)
    assert state is not None
    return state, effects


def sent(effects: list[Effect]) -> list[Notify]:
    return [e for e in effects if isinstance(e, Notify)]


def events(effects: list[Effect]) -> list[str]:
    return [str(n.event) for n in sent(effects)]


def fresh(route: Route = ROUTE) -> RouteState:
    return run(None, Restore(), route=route, new_run="r1")[0]


def test_steps_started_and_done_paused_and_why_resumed_and_promoted() -> None:
    state = fresh()
    state, effects = run(state, Tick(leader=True))  # set_weight 20 done, the pause begins
    assert events(effects) == ["post-step", "step-started"]
    started = sent(effects)[1].payload
    assert (started["step"], started["step_detail"], started["weights"]) == (
        1, "pause 30s", {"stable": 80, "canary": 20})
    assert started["message"] == "shop: step 2/4 started (pause 30s); weights stable 80, canary 20"
    assert started["previous_phase"] == "progressing" and started["time"] == T0
    assert started["id"] == f"shop/{state.run}/{state.seq}/step-started"
    # The timer is up but the guard has no evidence: paused, and why.
    state, effects = run(state, Tick(leader=True), now=T0 + 30)
    assert events(effects) == ["paused"]
    assert sent(effects)[0].payload["reason"] == "waiting for evidence"
    assert sent(effects)[0].payload["message"] == "shop: paused at step 2/4: waiting for evidence"
    # An operator's pause changes why: that is news too; resume ends it.
    state, effects = run(state, Act(Action.PAUSE), now=T0 + 31)
    assert events(effects) == ["paused"] and sent(effects)[0].payload["reason"] == "manual"
    state, effects = run(state, Act(Action.RESUME), now=T0 + 32)
    assert events(effects) == ["resumed"]
    # promote --full: every step left is done, in order, then promoted.
    state, effects = run(state, Act(Action.PROMOTE, full=True), now=T0 + 33)
    assert events(effects) == ["post-step", "post-step", "post-step", "promoted"]
    assert [n.payload["step"] for n in sent(effects)[:3]] == [2, 3, 4]
    assert len({n.payload["id"] for n in sent(effects)}) == 4  # one id each


def test_a_guard_abort_carries_the_verdicts_numbers() -> None:
    state = run(fresh(), Tick(leader=True))[0]
    effects: list[Effect] = []
    for i in range(1, 30):
        state, effects = run(state, Measurement(state.run, state.step, {
            "canary": Tally(100, 50, 100), "stable": Tally(100, 0, 100)}), now=T0 + i)
        if state.phase == Phase.ABORTED:
            break
    [abort] = sent(effects)
    body = abort.payload
    assert (body["event"], body["aborted_by"]) == ("abort", "guard")
    assert body["reason"].startswith("guard: canary error rate 50%")
    verdict = body["verdict"]
    assert (verdict["key"], verdict["outcome"]) == ("canary:error_rate", "fail")
    assert verdict["events"] > 0 and verdict["trials"] >= verdict["events"]
    assert verdict["log_e_fail"] >= 0 and verdict["fail_at"] > 1
    assert verdict["summary"] == body["reason"].removeprefix("guard: ")
    assert body["weights"] == {"stable": 100, "canary": 0}
    # An operator's abort has no verdict.
    manual = run(run(fresh(), Tick(leader=True))[0], Act(Action.ABORT, reason="x"))[1]
    assert [(n.payload["aborted_by"], n.payload["verdict"]) for n in sent(manual)] == [
        ("operator", None)]


def test_a_retry_starts_at_step_one_again_and_says_so() -> None:
    aborted = run(run(fresh(), Tick(leader=True))[0], Act(Action.ABORT))[0]
    retried, effects = run(aborted, Act(Action.RETRY), new_run="r3")
    assert events(effects) == ["step-started"]
    assert (sent(effects)[0].payload["step"], sent(effects)[0].payload["run"]) == (0, "r3")


def test_blue_green_switches_and_switches_back_on_abort() -> None:
    bg: dict[str, Any] = {"strategy": "blue-green", "active": "blue", "weights": None,
          "versions": {"blue": {"endpoints": ["http://127.0.0.1:9001"]},
                       "green": {"endpoints": ["http://127.0.0.1:9002"]}}}
    blue = make(steps=None, **bg)
    green = make(steps=None, **{**bg, "active": "green"})
    state = fresh(blue)
    switched, effects = run(state, Reconfigure(), route=green)
    assert events(effects) == ["switched"]
    body = sent(effects)[0].payload
    assert (body["from"], body["to"], body["message"]) == ("blue", "green",
                                                           "shop: switched from blue to green")
    back, effects = run(switched, Act(Action.ABORT), route=green)
    assert events(effects) == ["abort", "switched"]
    assert sent(effects)[1].payload["message"] == "shop: switched from green to blue " \
                                                  "(switched back)"


def test_only_the_replica_that_decided_notifies() -> None:
    state = fresh()
    theirs = run(state, Tick(leader=True))[0]
    assert sent(run(state, PeerUpdate(theirs))[1]) == []


def test_hooks_get_only_the_events_they_name() -> None:
    route = make(hooks=[{"on": ["paused", "resumed"], "url": "http://127.0.0.1:7000/a"},
                        {"on": "abort", "url": "http://127.0.0.1:7000/b", "format": "slack"}])
    state, effects = run(fresh(route), Tick(leader=True), route=route)
    assert events(effects) == []
    state, effects = run(state, Act(Action.PAUSE), route=route)
    assert [(n.event, [h.url for h in n.hooks]) for n in sent(effects)] == [
        (E.PAUSED, ["http://127.0.0.1:7000/a"])]
    state, effects = run(state, Act(Action.ABORT), route=route)
    assert [(n.event, n.hooks[0].format) for n in sent(effects)] == [
        (E.ABORT, WebhookFormat.SLACK)]


def test_webhook_settings() -> None:
    url = "http://127.0.0.1:7000/n"
    assert Webhook.model_validate({"on": "abort", "url": url}).on == (E.ABORT,)
    assert Webhook.model_validate({"on": "all", "url": url}).on == NOTIFICATIONS
    assert E.PRE_STEP not in NOTIFICATIONS and len(NOTIFICATIONS) == 7
    hook = Webhook.model_validate({"on": ["paused", "paused", "abort"], "url": url})
    assert (hook.on, hook.retries, hook.format) == ((E.PAUSED, E.ABORT), 5, WebhookFormat.JSON)
    cases: list[tuple[dict[str, Any], str]] = [
                        ({"on": []}, "at least one event"),
                         ({"on": "pre-step", "format": "slack"}, "gets the JSON payload"),
                         ({"on": "abort", "retries": 21}, "less than or equal to 20"),
                         ({"on": "abort", "format": "teams"}, "'json' or 'slack'"),
                         ({"on": "nope"}, "pre-step")]
    for bad, message in cases:
        with pytest.raises(ValidationError, match=message):
            Webhook.model_validate({"url": url, **bad})


def test_an_unquoted_on_key_in_yaml_is_the_events_not_a_boolean(tmp_path: Any) -> None:
    from splitproxy.config.models import ConfigError, load

    path = tmp_path / "c.yaml"
    path.write_text("""routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
      canary: {endpoints: ["http://127.0.0.1:9002"]}
    weights: {stable: 90, canary: 10}
    rollout:
      webhooks:
        - {on: pre-step, url: "http://127.0.0.1:7000/gate"}
        - on: [paused, abort]
          url: http://127.0.0.1:7000/n
""")
    rollout = load(path).routes[0].rollout
    assert rollout is not None
    assert [h.on for h in rollout.webhooks] == [(E.PRE_STEP,), (E.PAUSED, E.ABORT)]
    path.write_text(path.read_text().replace("[paused, abort]", "[paused, nope]"))
    with pytest.raises(ConfigError, match=r"c.yaml:10: routes\[0\].rollout.webhooks\[1\].on"):
        load(path)
