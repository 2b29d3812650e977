"""The rollout state machine: every phase transition as one pure call on plain floats.

No clock, no sockets, no event loop: `now` is a number passed in, as the engine passes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from splitproxy import rollout
from splitproxy.config.guard import Analysis
from splitproxy.config.models import Route
from splitproxy.config.steps import DeployWindow
from splitproxy.rollout import (
    ActionError,
    Actor,
    PauseReason,
    Phase,
    RouteState,
    advance,
    identity,
    in_window,
    pause,
    promote,
    resume,
    start,
    weights,
)
from splitproxy.rollout import abort as _abort
from splitproxy.rollout import retry as _retry

ABORTED, IDLE, PAUSED, PROGRESSING, PROMOTED = (
    Phase.ABORTED, Phase.IDLE, Phase.PAUSED, Phase.PROGRESSING, Phase.PROMOTED)
AWAIT_PROMOTE, WAITING, MANUAL, OUTSIDE_WINDOW = (
    PauseReason.AWAIT_PROMOTE, PauseReason.WAITING, PauseReason.MANUAL,
    PauseReason.OUTSIDE_WINDOW)
RUN = "r1"


def abort(state: RouteState, reason: str, now: float) -> RouteState:
    return _abort(state, reason, now, Actor.OPERATOR)


def retry(state: RouteState, route: Route, now: float) -> RouteState:
    return _retry(state, route, now, "r2")

SEOUL = ZoneInfo("Asia/Seoul")
T0 = datetime(2024, 6, 3, 12, 0, tzinfo=SEOUL).timestamp()  # a Monday, noon in Seoul
SATURDAY = datetime(2024, 6, 8, 12, 0, tzinfo=SEOUL).timestamp()
TUESDAY = datetime(2024, 6, 4, 12, 0, tzinfo=SEOUL).timestamp()

STEPS: list[Any] = [
    {"set_weight": 20},
    {"pause": "30s"},
    {"set_weight": 50},
    {"pause": {}},
    {"set_weight": 100},
]
WEEKDAYS = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "10:00", "end": "16:00",
            "tz": "Asia/Seoul"}
ANALYSIS = {"max_error_rate": 0.01}


def make_route(**kw: Any) -> Route:
    """Route "shop": stable + canary, weights 100/0, plus whatever `kw` sets."""
    data: dict[str, Any] = {
        "name": "shop",
        "versions": {
            "stable": {"endpoints": ["http://127.0.0.1:9001"]},
            "canary": {"endpoints": ["http://127.0.0.1:9002"]},
        },
        "weights": {"stable": 100, "canary": 0},
    }
    data.update(kw)
    return Route.model_validate(data)


def rolling(steps: list[Any] = STEPS, window: dict[str, Any] | None = None,
            **kw: Any) -> Route:
    ro: dict[str, Any] = {"steps": steps}
    if window is not None:
        ro["window"] = window
    return make_route(rollout=ro, analysis=kw.pop("analysis", ANALYSIS), **kw)


def at(route: Route, *times: float) -> RouteState:
    """A rollout started at T0 and advanced at each of `times`."""
    state = start(route, T0, RUN)
    for t in (T0, *times):
        state, _ = advance(state, route, t)
    return state


def pos(state: RouteState) -> tuple[str, int, str | None]:
    return state.phase, state.step, state.pause_reason


ROUTE = rolling()
STABLE_ONLY = {"stable": 100, "canary": 0}
CANARY_ONLY = {"stable": 0, "canary": 100}


# --------------------------------------------------------------------------- idle


def test_a_route_without_steps_is_idle_and_serves_its_configured_weights() -> None:
    route = make_route(weights={"stable": 90, "canary": 10})
    state, events = advance(start(route, T0, RUN), route, T0 + 3600)
    assert (state.phase, events) == (IDLE, [])
    assert weights(state, route) == {"stable": 90, "canary": 10}


# --------------------------------------------------------------------------- steps


def test_a_new_rollout_starts_at_step_zero_with_the_configured_weights() -> None:
    state = start(ROUTE, T0, RUN)
    assert (pos(state), state.weight) == ((PROGRESSING, 0, None), None)
    assert weights(state, ROUTE) == STABLE_ONLY


def test_set_weight_applies_at_once_and_the_steps_own_the_weights() -> None:
    state, events = advance(start(ROUTE, T0, RUN), ROUTE, T0)
    assert pos(state) == (PROGRESSING, 1, None)
    assert weights(state, ROUTE) == {"stable": 80, "canary": 20}
    assert events == ["step 1: set_weight 20"]


@pytest.mark.parametrize(
    ("elapsed", "expected", "canary"),
    [
        (0.0, (PROGRESSING, 1, None), 20),
        (29.9, (PROGRESSING, 1, None), 20),
        # The pause is over: set_weight 50 runs in the same call, then `pause: {}` waits.
        (30.0, (PAUSED, 3, AWAIT_PROMOTE), 50),
        (31.0, (PAUSED, 3, AWAIT_PROMOTE), 50),
    ],
)
def test_timed_pause_advances_only_after_its_duration(
    elapsed: float, expected: tuple[str, int, str | None], canary: int
) -> None:
    state = at(ROUTE, T0 + elapsed)
    assert pos(state) == expected
    assert weights(state, ROUTE)["canary"] == canary


def test_an_empty_pause_waits_for_promote_however_long_it_takes() -> None:
    state = at(ROUTE, T0 + 30, T0 + 30 * 86400)
    assert pos(state) == (PAUSED, 3, AWAIT_PROMOTE)


def test_promote_passes_an_empty_pause_and_the_last_step_promotes() -> None:
    waiting = at(ROUTE, T0 + 30)
    promoted = promote(waiting, ROUTE, T0 + 40, full=False)
    assert pos(promoted) == (PROGRESSING, 4, None)
    state, events = advance(promoted, ROUTE, T0 + 40)
    assert pos(state) == (PROMOTED, 5, None)
    assert weights(state, ROUTE) == CANARY_ONLY
    assert events == ["step 5: set_weight 100", "all steps done: promoted"]


def test_promote_during_a_timed_pause_skips_the_rest_of_it() -> None:
    state = promote(at(ROUTE), ROUTE, T0 + 1, full=False)
    assert pos(advance(state, ROUTE, T0 + 1)[0]) == (PAUSED, 3, AWAIT_PROMOTE)


@pytest.mark.parametrize("elapsed", [0.0, 30.0])
def test_promote_full_skips_to_the_end(elapsed: float) -> None:
    state = promote(at(ROUTE, T0 + elapsed), ROUTE, T0 + elapsed, full=True)
    assert (pos(state), weights(state, ROUTE)) == ((PROMOTED, 5, None), CANARY_ONLY)


def test_a_promoted_rollout_stays_promoted() -> None:
    state = promote(at(ROUTE), ROUTE, T0, full=True)
    assert advance(state, ROUTE, T0 + 86400) == (state, [])


def test_a_last_step_below_100_promotes_with_the_canary_taking_everything() -> None:
    route = rolling([{"set_weight": 30}])
    state = at(route)
    assert state.phase == PROMOTED
    assert weights(state, route) == CANARY_ONLY


# --------------------------------------------------------------------------- operator actions


def test_abort_gives_the_baseline_everything_and_keeps_the_reason() -> None:
    state = abort(at(ROUTE, T0 + 30), "manual: bad deploy", T0 + 31)
    assert (state.phase, state.abort_reason, state.aborted_at) == (
        ABORTED, "manual: bad deploy", T0 + 31)
    assert weights(state, ROUTE) == STABLE_ONLY


def test_an_aborted_rollout_does_not_advance() -> None:
    state = abort(at(ROUTE), "x", T0)
    assert advance(state, ROUTE, T0 + 3600) == (state, [])


def test_abort_gives_everything_to_the_analysis_baseline_not_the_first_version() -> None:
    route = rolling(analysis={**ANALYSIS, "baseline": "stable"},
                    versions={"canary": {"endpoints": ["http://127.0.0.1:9002"]},
                              "stable": {"endpoints": ["http://127.0.0.1:9001"]}})
    assert weights(abort(at(route), "x", T0), route) == STABLE_ONLY


def test_retry_starts_over_at_step_zero_and_clears_the_abort() -> None:
    aborted = replace(abort(at(ROUTE, T0 + 30), "guard: bad", T0 + 31),
                      checks=({"result": "fail"},), evidence={"run": RUN})
    state = retry(aborted, ROUTE, T0 + 60)
    assert (pos(state), state.weight, state.abort_reason, state.evidence) == (
        (PROGRESSING, 0, None), None, None, {})
    assert state.checks == aborted.checks  # the history that led to the abort stays visible
    assert weights(advance(state, ROUTE, T0 + 60)[0], ROUTE)["canary"] == 20


def test_pause_holds_a_progressing_rollout_and_resume_continues_it() -> None:
    paused = pause(at(ROUTE), ROUTE)
    assert pos(paused) == (PAUSED, 1, MANUAL)
    assert pos(advance(paused, ROUTE, T0 + 3600)[0]) == (PAUSED, 1, MANUAL)
    resumed = resume(paused, T0 + 3600)
    assert pos(resumed) == (PROGRESSING, 1, None)
    # The timed pause counts again from the resume.
    assert pos(advance(resumed, ROUTE, T0 + 3629)[0]) == (PROGRESSING, 1, None)
    assert pos(advance(resumed, ROUTE, T0 + 3630)[0]) == (PAUSED, 3, AWAIT_PROMOTE)


def test_promote_passes_a_manual_pause_too() -> None:
    state = promote(pause(at(ROUTE), ROUTE), ROUTE, T0, full=True)
    assert state.phase == PROMOTED


def _idle() -> tuple[RouteState, Route]:
    route = make_route(analysis=ANALYSIS)
    return start(route, T0, RUN), route


def _fresh() -> tuple[RouteState, Route]:
    return start(ROUTE, T0, RUN), ROUTE


def _waiting() -> tuple[RouteState, Route]:
    return at(ROUTE, T0 + 30), ROUTE


def _evidence() -> tuple[RouteState, Route]:
    return advance(at(ROUTE), ROUTE, T0 + 30, passed=False)[0], ROUTE


def _paused() -> tuple[RouteState, Route]:
    return pause(at(ROUTE), ROUTE), ROUTE


def _progressing() -> tuple[RouteState, Route]:
    return at(ROUTE), ROUTE


def _aborted() -> tuple[RouteState, Route]:
    return abort(at(ROUTE), "x", T0), ROUTE


def _promoted() -> tuple[RouteState, Route]:
    return promote(at(ROUTE), ROUTE, T0, full=True), ROUTE


def _outside() -> tuple[RouteState, Route]:
    route = rolling(window=WEEKDAYS)
    return advance(start(route, SATURDAY, RUN), route, SATURDAY)[0], route


Action = Callable[[RouteState, Route], RouteState]


def promote_one(s: RouteState, r: Route) -> RouteState:
    return promote(s, r, T0, full=False)


def promote_full(s: RouteState, r: Route) -> RouteState:
    return promote(s, r, T0, full=True)


def retry_now(s: RouteState, r: Route) -> RouteState:
    return retry(s, r, T0)


def resume_now(s: RouteState, r: Route) -> RouteState:
    return resume(s, T0)


pause_now: Action = pause


@pytest.mark.parametrize(
    ("action", "given", "message"),
    [
        (promote_one, _idle, "no rollout steps"),
        (promote_full, _idle, "no rollout steps"),
        (promote_one, _fresh, "nothing to promote"),  # step 0 is a set_weight, not a pause
        (promote_one, _aborted, "rollout is aborted"),
        (promote_full, _aborted, "rollout is aborted"),
        (promote_one, _promoted, "rollout is promoted"),
        (promote_one, _outside, "outside deployment window"),
        (retry_now, _progressing, "only an aborted rollout"),
        (retry_now, _waiting, "only an aborted rollout"),
        (retry_now, _promoted, "only an aborted rollout"),
        (retry_now, _idle, "only an aborted rollout"),
        (pause_now, _idle, "only a progressing rollout"),
        (pause_now, _paused, r"only a progressing rollout can be paused \(it is paused: "
                             r"manual\)"),
        (pause_now, _waiting, "only a progressing rollout"),
        (pause_now, _aborted, "only a progressing rollout"),
        (pause_now, _promoted, "only a progressing rollout"),
        (resume_now, _progressing, "only a manually paused"),
        (resume_now, _waiting, "use promote"),  # `pause: {}` is passed by promote, not resume
        (resume_now, _evidence, "promote skips the wait"),
        (resume_now, _outside, "only a manually paused"),  # the window resumes by itself
        (resume_now, _aborted, "only a manually paused"),
        (resume_now, _promoted, "only a manually paused"),
    ],
)
def test_actions_that_do_not_apply_raise_action_error(
    action: Action, given: Callable[[], tuple[RouteState, Route]], message: str
) -> None:
    state, route = given()
    with pytest.raises(ActionError, match=message):
        action(state, route)


# --------------------------------------------------------------------------- evidence


def test_a_timed_pause_over_without_a_pass_waits_for_evidence() -> None:
    state = at(ROUTE)
    state, events = advance(state, ROUTE, T0 + 29.9, passed=False)
    assert pos(state) == (PROGRESSING, 1, None)
    state, events = advance(state, ROUTE, T0 + 30, passed=False)
    assert pos(state) == (PAUSED, 1, WAITING)
    assert events == ["step 2: pause of 30s over, waiting for evidence"]
    assert weights(state, ROUTE)["canary"] == 20
    assert advance(state, ROUTE, T0 + 3600, passed=False) == (state, [])
    state, events = advance(state, ROUTE, T0 + 3600, passed=True)
    assert pos(state) == (PAUSED, 3, AWAIT_PROMOTE)  # on to the next step, then its pause
    assert events[0] == "step 2: the guard passed"


def test_a_pass_before_the_time_is_up_does_not_shorten_the_pause() -> None:
    state = at(ROUTE)
    assert pos(advance(state, ROUTE, T0 + 29, passed=True)[0]) == (PROGRESSING, 1, None)


def test_a_wait_for_promote_is_not_a_wait_for_evidence() -> None:
    state = at(ROUTE, T0 + 30)
    assert pos(advance(state, ROUTE, T0 + 3600, passed=False)[0]) == (PAUSED, 3, AWAIT_PROMOTE)


def test_waiting_for_evidence_outside_the_window_stays_outside() -> None:
    route = rolling(window=WEEKDAYS)
    state = at(route)
    friday_evening = seoul(7, "16:30")
    state, _ = advance(replace(state, step_started=friday_evening - 60), route,
                       friday_evening, passed=True)
    assert pos(state) == (PAUSED, 1, OUTSIDE_WINDOW)


# --------------------------------------------------------------------------- deployment window


def seoul(day: int, hhmm: str) -> float:
    h, m = map(int, hhmm.split(":"))
    return datetime(2024, 6, day, h, m, tzinfo=SEOUL).timestamp()


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        (seoul(3, "12:00"), True),  # Monday noon
        (seoul(3, "10:00"), True),  # start is inclusive
        (seoul(3, "09:59"), False),
        (seoul(3, "15:59"), True),
        (seoul(3, "16:00"), True),  # end is inclusive, to the minute
        (seoul(3, "16:01"), False),
        (seoul(7, "12:00"), True),  # Friday
        (seoul(8, "12:00"), False),  # Saturday
        (seoul(9, "12:00"), False),  # Sunday
        # Monday 02:00 UTC is Monday 11:00 in Seoul: the window's own time zone counts.
        (datetime(2024, 6, 3, 2, 0, tzinfo=ZoneInfo("UTC")).timestamp(), True),
        # Sunday 23:30 UTC is Monday 08:30 in Seoul: too early.
        (datetime(2024, 6, 2, 23, 30, tzinfo=ZoneInfo("UTC")).timestamp(), False),
    ],
)
def test_in_window_uses_days_hours_and_time_zone(now: float, inside: bool) -> None:
    assert in_window(DeployWindow.model_validate(WEEKDAYS), now) is inside


def test_no_window_is_always_open() -> None:
    assert in_window(None, SATURDAY)


WINDOWED = rolling(window=WEEKDAYS)


def test_outside_the_window_a_new_rollout_pauses_before_its_first_step() -> None:
    state, events = advance(start(WINDOWED, SATURDAY, RUN), WINDOWED, SATURDAY)
    assert pos(state) == (PAUSED, 0, OUTSIDE_WINDOW)
    assert weights(state, WINDOWED) == STABLE_ONLY
    assert events == ["outside deployment window: paused"]


def test_outside_the_window_a_finished_pause_does_not_advance() -> None:
    # Set 20 % at 16:00:45 on Monday (the window's last minute); the 30 s pause ends at
    # 16:01:15, after the window closed.
    state = at_times(WINDOWED, seoul(3, "16:00") + 45, seoul(3, "16:00") + 90)
    assert pos(state) == (PAUSED, 1, OUTSIDE_WINDOW)
    assert weights(state, WINDOWED)["canary"] == 20


def test_the_window_opening_again_resumes_progressing() -> None:
    state = at_times(WINDOWED, SATURDAY, TUESDAY)
    assert pos(state) == (PROGRESSING, 1, None)
    assert weights(state, WINDOWED)["canary"] == 20


def test_abort_is_allowed_outside_the_window() -> None:
    state = at_times(WINDOWED, SATURDAY)
    assert weights(abort(state, "manual", SATURDAY), WINDOWED) == STABLE_ONLY


NIGHTS = {"days": ["fri"], "start": "22:00", "end": "02:00", "tz": "Asia/Seoul"}


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        (seoul(7, "21:59"), False),  # Friday evening, before
        (seoul(7, "22:00"), True),
        (seoul(7, "23:59"), True),
        (seoul(8, "00:00"), True),  # Saturday morning: Friday's window, across midnight
        (seoul(8, "02:00"), True),  # the end is inclusive
        (seoul(8, "02:01"), False),
        (seoul(8, "22:30"), False),  # Saturday night is not listed
        (seoul(7, "01:00"), False),  # Friday 01:00 belongs to Thursday's night
    ],
)
def test_a_window_across_midnight_belongs_to_the_day_it_starts(now: float,
                                                                 inside: bool) -> None:
    assert in_window(DeployWindow.model_validate(NIGHTS), now) is inside


@pytest.mark.parametrize(("hhmm", "inside"), [("00:00", True), ("23:59", True)])
def test_the_default_window_is_the_whole_day_last_minute_included(hhmm: str,
                                                                   inside: bool) -> None:
    assert in_window(DeployWindow(), seoul(3, hhmm) + 59) is inside


def test_a_one_minute_window_is_open_for_that_minute() -> None:
    window = DeployWindow(start="12:00", end="12:00", tz="Asia/Seoul")
    assert [in_window(window, seoul(3, t)) for t in ("11:59", "12:00", "12:01")] == [
        False, True, False]


def test_a_rollout_waiting_for_its_window_can_be_paused_and_then_stays_paused() -> None:
    route = rolling(window=WEEKDAYS)
    waiting = advance(start(route, SATURDAY, RUN), route, SATURDAY)[0]
    assert pos(waiting) == (PAUSED, 0, OUTSIDE_WINDOW)
    held = pause(waiting, route)
    assert pos(held) == (PAUSED, 0, MANUAL)
    assert pos(advance(held, route, TUESDAY)[0]) == (PAUSED, 0, MANUAL)  # window open: still
    assert pos(advance(resume(held, TUESDAY), route, TUESDAY)[0]) == (PROGRESSING, 1, None)


def test_a_manual_pause_is_not_resumed_by_the_window() -> None:
    state = pause(at_times(WINDOWED, seoul(3, "12:00")), WINDOWED)
    assert pos(advance(state, WINDOWED, TUESDAY)[0]) == (PAUSED, 1, MANUAL)


def at_times(route: Route, first: float, *later: float) -> RouteState:
    state = start(route, first, RUN)
    for t in (first, *later):
        state, _ = advance(state, route, t)
    return state


# --------------------------------------------------------------------------- revision


def edit(**kw: Any) -> Route:
    """ROUTE with one field replaced."""
    data = ROUTE.model_dump(exclude_none=True)
    for path, value in kw.items():
        node = data
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return Route.model_validate(data)


@pytest.mark.parametrize(
    ("change", "changes_identity"),
    [
        ({"rollout__steps": [{"set_weight": 10}, {"pause": {}}]}, True),
        ({"rollout__revision": "v2.2"}, True),
        ({"versions__next": {"endpoints": ["http://127.0.0.1:9004"]}}, True),  # a version more
        ({"analysis__baseline": "canary", "rollout__canary": "stable"}, True),  # roles swapped
        # Endpoints are not the rollout: scaling or replacing pods never restarts it.
        ({"versions__canary": {"endpoints": ["http://127.0.0.1:9003"]}}, False),
        ({"versions__canary": {"endpoints": ["http://127.0.0.1:9002", "http://127.0.0.1:9003"]}},
         False),
        ({"versions__stable": {"endpoints": ["http://10.0.0.1:80"]}}, False),
        # With steps, weights are only the starting point (and without, see below).
        ({"weights": {"stable": 90, "canary": 10}}, False),
        ({"rollout__canary": "canary"}, False),  # the same canary, now named explicitly
        ({"analysis__max_error_rate": 0.05}, False),
        ({"analysis__max_p99_ms": 250.0}, False),
        ({"analysis__alpha": 0.001}, False),
        ({"analysis__interval": 5.0, "analysis__advance": "on-timer"}, False),
        ({"rollout__webhooks": [{"on": "abort", "url": "http://127.0.0.1:7000/n",
                                 "timeout": 1.0}]}, False),
        ({"rollout__window": WEEKDAYS}, False),
        ({"sticky": {"cookie": "sp"}}, False),
        ({"match": {"path_prefix": "/api"}}, False),
    ],
)
def test_identity_is_versions_revision_steps_canary_and_active_only(
    change: dict[str, Any], changes_identity: bool
) -> None:
    assert (identity(edit(**change)) != identity(ROUTE)) is changes_identity


def test_without_steps_weights_are_not_part_of_the_identity_either() -> None:
    # Editing the weights of a step-less route moves traffic within the same rollout (and
    # keeps an abort); a new build is announced by `rollout.revision`.
    plain = make_route(weights={"stable": 90, "canary": 10}, analysis=ANALYSIS)
    assert identity(plain) == identity(make_route(weights={"stable": 50, "canary": 50},
                                                  analysis=ANALYSIS))
    assert identity(plain) != identity(make_route(weights={"stable": 90, "canary": 10},
                                                  analysis=ANALYSIS,
                                                  rollout={"revision": "v2"}))


def test_blue_green_active_is_part_of_the_identity() -> None:
    assert identity(blue_green("blue")) != identity(blue_green("green"))


def test_identity_is_stable_across_loads() -> None:
    assert identity(rolling()) == identity(rolling())


# --------------------------------------------------------------------------- blue/green


def blue_green(active: str = "green") -> Route:
    return Route.model_validate({
        "name": "shop",
        "strategy": "blue-green",
        "versions": {"blue": {"endpoints": ["http://127.0.0.1:9001"]},
                     "green": {"endpoints": ["http://127.0.0.1:9002"]}},
        "active": active,
        "analysis": ANALYSIS,
    })


def served(color: str | None) -> RouteState | None:
    """The state of the run before: `color` was active and served."""
    return None if color is None else start(blue_green(color), T0 - 60, "r0")


def test_blue_green_gives_the_active_color_everything() -> None:
    route = blue_green("blue")
    assert weights(start(route, T0, RUN), route) == {"blue": 100, "green": 0}


def test_blue_green_switch_is_watched_and_switches_back_on_abort() -> None:
    route = blue_green("green")
    state = start(route, T0, RUN, previous=served("blue"))
    assert (state.phase, state.previous_active) == (IDLE, "blue")
    assert weights(state, route) == {"blue": 0, "green": 100}
    assert weights(abort(state, "x", T0), route) == {"blue": 100, "green": 0}


def test_blue_green_abort_switches_back() -> None:
    route = blue_green("green")
    state = abort(start(route, T0, RUN, previous=served("blue")), "guard: x", T0)
    assert weights(state, route) == {"blue": 100, "green": 0}


@pytest.mark.parametrize("serving", [None, "green"])
def test_blue_green_without_a_previous_color_has_nothing_to_switch_back_to(
    serving: str | None,
) -> None:
    route = blue_green("green")
    state = abort(start(route, T0, RUN, previous=served(serving)), "x", T0)
    assert state.previous_active is None
    assert weights(state, route) == {"blue": 0, "green": 100}


def test_blue_green_retry_switches_to_the_active_color_again() -> None:
    route = blue_green("green")
    aborted = abort(start(route, T0, RUN, previous=served("blue")), "x", T0)
    assert weights(retry(aborted, route, T0), route) == {"blue": 0, "green": 100}


def test_blue_green_retry_keeps_the_color_to_switch_back_to() -> None:
    # After a retry the switch is watched again: a second failure must still fall back to blue.
    route = blue_green("green")
    retried = retry(abort(start(route, T0, RUN, previous=served("blue")), "x", T0), route, T0)
    assert weights(abort(retried, "guard: x", T0), route) == {"blue": 100, "green": 0}


# --------------------------------------------------------------------------- persistence shape


def test_state_round_trips_through_json() -> None:
    import json

    state = replace(abort(at(ROUTE, T0 + 30), "guard: x", T0 + 31),
                    evidence={"v": 1, "run": RUN, "tests": {"canary:error_rate": {"v": 1}}},
                    checks=({"result": "fail", "time": T0},))
    text = json.dumps(state.to_json())
    again = RouteState.from_json(json.loads(text))
    assert json.dumps(again.to_json()) == text
    assert replace(again, checks=()) == replace(state, checks=())


def test_replace_keeps_states_comparable() -> None:
    # The engine persists only when a state changed: equal states must compare equal.
    state = at(ROUTE)
    assert replace(state) == state
    assert rollout.PHASES == (IDLE, PROGRESSING, PAUSED, PROMOTED, ABORTED)


def test_analysis_defaults_match_the_issue() -> None:
    a = Analysis()
    assert (a.alpha, a.beta, a.interval, a.advance, a.max_error_rate, a.include_synthetic) == (
        0.01, 0.05, 1.0, "on-pass", 0.01, False)
