"""The guard: anytime-valid sequential tests on exact counts, one measurement at a time.

What is judged (`plan`): every version but the baseline that has traffic under the weights of
the moment (N-way splits included), or for blue/green the color switched to; per version one
test per limit: the error rate against `max_error_rate`, the share of requests whose upstream
time is over each `max_pNN_ms` against its threshold (`config.LATENCY_LIMITS`), and with
`compare_to_baseline` the same counts against the baseline's over the same time
(`sequential`); then each of `analysis.metrics` against its threshold and/or the baseline
(`custom`: counts as above, gauges by `gauges`' sign test). Each test gets its share of the
rollout's false-abort budget (`budget.step_alpha`: its segment, the segments planned, the
tests in it); dry-run metrics are judged at that level but take no share and decide nothing.

The evidence (`RouteState.evidence`, JSON) belongs to one *segment*: a run's step, with what
is judged in it. It restarts at every step and run, when what is judged changes (a reload
that changes a threshold, weights that give another version traffic), and after
MAX_SEGMENT (a long pause must not let a late regression hide behind hours of good
evidence). A restart takes the next segment's share only if the old segment could have failed
(it closed a slice): a segment that never could spent nothing.

A check's outcome: **fail** when any test fails (abort; the reason names the version, the
metric and the numbers); **pass** when every judged version passes every absolute limit (a
comparison counts for a metric only where it is that metric's sole test: with no events in
either version it can never pass); **inconclusive** otherwise. With no version to judge (the
canary has no weight yet) the outcome is pass: there is nothing to wait for.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from splitproxy.config.guard import Advance, Analysis
from splitproxy.config.metrics import CustomMetric
from splitproxy.config.models import Route, Strategy
from splitproxy.rollout import budget, custom
from splitproxy.rollout.events import Measurement
from splitproxy.rollout.machine import effective_active, mirror, validating, weights
from splitproxy.rollout.sequential import (
    RateLimit,
    RateState,
    RatioLimit,
    RatioState,
    judge,
    judge_ratio,
    observe,
    observe_ratio,
)
from splitproxy.rollout.state import Phase, RouteState
from splitproxy.rollout.tally import Tally
from splitproxy.rollout.verdicts import Outcome, RateVerdict, RatioVerdict

EVIDENCE_VERSION = 1
MAX_SEGMENT = 3600.0  # seconds: a segment this old restarts (from the alpha reserve)

Verdict = RateVerdict | RatioVerdict | custom.Verdict
TestState = RateState | RatioState | custom.State


@dataclass(frozen=True, slots=True)
class Test:
    """One sequential test: `version`'s `metric` against a limit, or against `against`."""

    version: str
    metric: str  # error_rate, p50, p90, p99; `metric:<name>` for analysis.metrics
    threshold: float  # a limit: the rate (a gauge: the value); a comparison: the margin
    limit: float | None = None  # latency: the upstream time in seconds; None: errors
    against: str | None = None  # a comparison: the baseline version
    custom: CustomMetric | None = None  # a custom metric (`rollout.custom`)

    @property
    def key(self) -> str:
        return f"{self.version}:{self.metric}" + (f"~{self.against}" if self.against else "")

    @property
    def dry_run(self) -> bool:
        """Shown, never aborts, never holds a step, spends no alpha."""
        return self.custom is not None and self.custom.dry_run

    @property
    def name(self) -> str:
        if self.custom is not None:
            return f"{self.version} {self.custom.name}"
        what = "error rate" if self.limit is None else \
            f"{self.metric} (over {self.limit * 1000:g} ms)"
        return f"{self.version} {what}"


@dataclass(frozen=True, slots=True)
class Plan:
    tests: tuple[Test, ...]
    planned: int  # segments the rollout plans: one per pause step
    key: str  # what is judged, and how: a change restarts the tests

    @property
    def spending(self) -> int:
        """The tests that share the segment's alpha: all but dry-run ones (which never
        abort; they are judged at the same level, to show what they would have done)."""
        return max(1, sum(1 for t in self.tests if not t.dry_run))


@dataclass(frozen=True, slots=True)
class Assessment:
    """A measurement folded in: the new evidence, the outcome and what decided it."""

    evidence: dict[str, Any]
    outcome: Outcome
    decided_by: Test | None  # fail: the first failing test; else the first not passing
    summary: str
    check: dict[str, Any]  # one line of the check history


def judged(state: RouteState, route: Route) -> tuple[list[str], str | None]:
    """(the versions judged, the baseline they are compared with)."""
    if state.phase == Phase.ABORTED:
        # What was judged until the abort moved the weights (for /status and the reason).
        state = replace(state, phase=Phase.PROGRESSING)
    if route.strategy == Strategy.BLUE_GREEN:
        if validating(state):  # the new color, on its preview traffic (`pre_switch`)
            return [state.active or route.baseline], None
        # The old color serves nothing after the switch: there is no comparison to make.
        return [effective_active(state, route) or route.baseline], None
    now = weights(state, route)
    return [v for v in route.versions if v != route.baseline and now.get(v, 0) > 0], \
        route.baseline


def plan(state: RouteState, route: Route) -> Plan:
    analysis = route.analysis
    assert analysis is not None
    versions, baseline = judged(state, route)
    limits = analysis.latency_limits()
    compare = analysis.compare_to_baseline if baseline is not None else None
    tests: list[Test] = []
    for v in versions:
        if analysis.max_error_rate is not None:
            tests.append(Test(v, "error_rate", analysis.max_error_rate))
        tests += [Test(v, name, threshold, seconds) for name, seconds, threshold in limits]
        if compare is not None:
            tests.append(Test(v, "error_rate", compare.margin, None, baseline))
            tests += [Test(v, name, compare.margin, seconds, baseline)
                      for name, seconds, _ in limits]
        tests += _metric_tests(v, analysis, baseline)
    # A `set_mirror` step's copies, or the route's own; after an abort, those of before it
    # (what was judged, as `judged` keeps the weights of before it).
    copies = mirror(replace(state, phase=Phase.PROGRESSING) if state.phase == Phase.ABORTED
                    else state, route)
    shadow = copies.to if copies is not None else None
    if shadow is not None and shadow not in versions and shadow != route.baseline:
        # A version that only gets the mirror's copies: the proxy's own counts see none of
        # its traffic, the custom metrics can (the shadow's match rate, README: Shadow
        # traffic), so it is judged on those before it serves anyone.
        tests += _metric_tests(shadow, analysis, baseline)
    steps = route.rollout.steps if route.rollout else ()
    planned = max(1, sum(1 for s in steps if s.pause is not None))
    what = [[t.key, t.threshold, t.limit] + ([t.custom.model_dump(mode="json")]
                                             if t.custom else []) for t in tests]
    key = hashlib.sha256(json.dumps([what, analysis.alpha, analysis.beta, planned])
                         .encode()).hexdigest()[:12]
    return Plan(tuple(tests), planned, key)


def _metric_tests(v: str, analysis: Analysis, baseline: str | None) -> list[Test]:
    tests = []
    for m in analysis.metrics:
        if m.threshold is not None:
            tests.append(Test(v, f"metric:{m.name}", m.threshold, custom=m))
        if m.compare_to_baseline is not None and baseline is not None:
            tests.append(Test(v, f"metric:{m.name}", m.compare_to_baseline.margin,
                              against=baseline, custom=m))
    return tests


# -- evidence ---------------------------------------------------------------------------------
def _fresh(state: RouteState, p: Plan, segment: int, now: float) -> dict[str, Any]:
    return {"v": EVIDENCE_VERSION, "run": state.run, "step": state.step, "segment": segment,
            "key": p.key, "since": now, "checks": 0, "outcome": str(Outcome.INCONCLUSIVE),
            "tests": {t.key: _new_state(t, now).to_json() for t in p.tests}}


def _new_state(t: Test, now: float) -> TestState:
    if t.custom is not None:
        return custom.new_state(t.custom, t.against is not None, now)
    return RatioState(since=now) if t.against else RateState(since=now)


def _load_state(t: Test, data: Any) -> TestState:
    if t.custom is not None:
        return custom.load_state(t.custom, t.against is not None, data)
    return RatioState.from_json(data) if t.against else RateState.from_json(data)


def _spent(evidence: Mapping[str, Any]) -> bool:
    """Whether a segment's tests could have failed: any closed a slice (or cannot tell)."""
    tests = evidence.get("tests")
    if not isinstance(tests, dict):
        return True
    return any(not isinstance(t, dict) or t.get("slices", t.get("blocks", 1)) != 0
               for t in tests.values())


def _current(evidence: Mapping[str, Any], state: RouteState, p: Plan) -> bool:
    return evidence.get("v") == EVIDENCE_VERSION and evidence.get("run") == state.run \
        and evidence.get("step") == state.step and evidence.get("key") == p.key


def _states(evidence: Mapping[str, Any], p: Plan) -> dict[str, TestState] | None:
    """The tests' states, or None if any cannot be read (the segment then restarts)."""
    raw = evidence.get("tests")
    if not isinstance(raw, dict):
        return None
    out: dict[str, TestState] = {}
    try:
        for t in p.tests:
            out[t.key] = _load_state(t, raw[t.key])
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    return out


def segment_of(state: RouteState, p: Plan, now: float) -> tuple[dict[str, Any],
                                                                 dict[str, TestState]]:
    """The evidence to go on with at `now`: the current segment's, or a new segment."""
    ev = state.evidence
    since = ev.get("since")
    young = isinstance(since, int | float) and now - since < MAX_SEGMENT
    if _current(ev, state, p) and young:
        states = _states(ev, p)
        if states is not None:
            return dict(ev), states
    segment = 0
    last = ev.get("segment")
    if ev.get("v") == EVIDENCE_VERSION and ev.get("run") == state.run \
            and isinstance(last, int) and not isinstance(last, bool) and last >= 0:
        segment = last + (1 if _spent(ev) else 0)
    fresh = _fresh(state, p, segment, now)
    states = _states(fresh, p)
    assert states is not None
    return fresh, states


def _limit(t: Test, analysis: Analysis, alpha: float) -> RateLimit | RatioLimit:
    if t.against is not None:
        return RatioLimit(margin=t.threshold, alpha=alpha, beta=analysis.beta)
    return RateLimit(threshold=t.threshold, alpha=alpha, beta=analysis.beta)


def _custom_limit(t: Test, analysis: Analysis, alpha: float) -> custom.Limit:
    assert t.custom is not None
    return custom.limit(t.custom, t.threshold, t.against is not None, alpha, analysis.beta)


def _counts(t: Test, tally: Tally | None) -> tuple[int, int]:
    """(events, trials) of one version for one test; events never exceed trials."""
    if tally is None:
        return 0, 0
    if t.limit is None:
        events, trials = tally.errors, tally.requests
    else:
        events, trials = tally.slow(t.limit), tally.timed
    return min(events, trials), trials


def _verdicts(p: Plan, evidence: Mapping[str, Any], states: Mapping[str, TestState],
              analysis: Analysis) -> list[tuple[Test, Verdict]]:
    alpha = budget.step_alpha(analysis.alpha, int(evidence["segment"]), p.planned,
                              tests=p.spending)
    out: list[tuple[Test, Verdict]] = []
    for t in p.tests:
        st = states[t.key]
        if t.custom is not None:
            out.append((t, custom.judge_test(_custom_limit(t, analysis, alpha), st)))
            continue
        limit = _limit(t, analysis, alpha)
        if isinstance(limit, RatioLimit):
            assert isinstance(st, RatioState)
            out.append((t, judge_ratio(limit, st)))
        else:
            assert isinstance(st, RateState)
            out.append((t, judge(limit, st)))
    return out


def _outcome(verdicts: list[tuple[Test, Verdict]]) -> tuple[Outcome, Test | None, str]:
    dry = len(verdicts)
    verdicts = [(t, v) for t, v in verdicts if not t.dry_run]  # shown, never decide
    dry -= len(verdicts)
    for t, v in verdicts:
        if v.outcome is Outcome.FAIL:
            return Outcome.FAIL, t, summary(t, v)
    absolute = {(t.version, t.metric) for t, _ in verdicts if t.against is None}
    needed = [(t, v) for t, v in verdicts
              if t.against is None or (t.version, t.metric) not in absolute]
    for t, v in needed:
        if v.outcome is not Outcome.PASS:
            return Outcome.INCONCLUSIVE, t, summary(t, v)
    if not verdicts:
        return Outcome.PASS, None, "nothing to judge: " + (
            "only dry-run metrics" if dry else "no version but the baseline has traffic")
    return Outcome.PASS, None, "; ".join(summary(t, v) for t, v in needed)


def summary(t: Test, v: Verdict) -> str:
    if t.custom is not None:
        return custom.summary(t.custom, t.version, v)
    if isinstance(v, RatioVerdict):
        return v.summary(t.name)
    assert isinstance(v, RateVerdict)
    return v.summary(t.name, "errors" if t.limit is None else "over")


def assess(state: RouteState, m: Measurement, route: Route, now: float) -> Assessment:
    """Fold one measurement of the current run and step into the evidence."""
    analysis = route.analysis
    assert analysis is not None
    p = plan(state, route)
    evidence, states = segment_of(state, p, now)
    tallies = m.tallies if m.error is None else None
    alpha = budget.step_alpha(analysis.alpha, int(evidence["segment"]), p.planned,
                              tests=p.spending)
    for t in p.tests:
        st = states[t.key]
        if t.custom is not None:  # read on its own: a failed query fails only its metric
            if (sample := m.custom.get(t.custom.name)) is not None:
                states[t.key] = custom.observe_sample(
                    t.custom, _custom_limit(t, analysis, alpha), st, sample, t.version,
                    t.against, now)
            continue
        if tallies is None:
            continue
        limit = _limit(t, analysis, alpha)
        events, trials = _counts(t, tallies.get(t.version))
        if isinstance(limit, RatioLimit):
            assert isinstance(st, RatioState) and t.against is not None
            base_events, base_trials = _counts(t, tallies.get(t.against))
            states[t.key] = observe_ratio(limit, st, events, base_events, trials,
                                          base_trials, now)
        else:
            assert isinstance(st, RateState)
            states[t.key] = observe(limit, st, events, trials, now)
    verdicts = _verdicts(p, evidence, states, analysis)
    outcome, decided_by, line = _outcome(verdicts)
    evidence = {**evidence, "checks": int(evidence.get("checks", 0)) + 1,
                "outcome": str(outcome),
                "tests": {k: s.to_json() for k, s in states.items()}}
    check: dict[str, Any] = {
        "time": now, "run": m.run, "step": m.step, "segment": evidence["segment"],
        "result": str(outcome) if m.error is None else str(Outcome.INCONCLUSIVE),
        "requests": {v: t.requests for v, t in sorted((tallies or {}).items())},
        "summary": line, "error": m.error,
    }
    if failed := {n: s.error for n, s in sorted(m.custom.items()) if s.error is not None}:
        check["metric_errors"] = failed
    if dry := [t.key for t, v in verdicts if t.dry_run and v.outcome is Outcome.FAIL]:
        check["dry_run_failed"] = dry  # what would have aborted (Argo's dryRun)
    return Assessment(evidence, outcome, decided_by, line, check)


def stale_check(m: Measurement, now: float, why: str) -> dict[str, Any]:
    """History line of a reading that decides nothing (`why`)."""
    return {"time": now, "run": m.run, "step": m.step, "result": str(Outcome.INCONCLUSIVE),
            "requests": {v: t.requests for v, t in sorted((m.tallies or {}).items())},
            "summary": f"not judged: {why}", "error": m.error, "stale": True}


def passed(state: RouteState, route: Route) -> bool:
    """Whether a timed pause may end now: the guard passed the step at its latest check (or
    does not gate steps: no analysis, `advance: on-timer`, nothing to judge)."""
    analysis = route.analysis
    if analysis is None or analysis.advance == Advance.ON_TIMER:
        return True
    p = plan(state, route)
    if not p.tests:
        return True
    ev = state.evidence
    return _current(ev, state, p) and ev.get("outcome") == str(Outcome.PASS)


def report(state: RouteState, route: Route) -> dict[str, Any] | None:
    """The last segment's verdicts for /status: per test, estimate, interval, evidence and
    counts (`current`: of the step the rollout is at; after the last step, the verdicts that
    let it end). None before the first check of the run."""
    analysis = route.analysis
    if analysis is None:
        return None
    p = plan(state, route)
    ev = state.evidence
    ours = ev.get("v") == EVIDENCE_VERSION and ev.get("run") == state.run \
        and ev.get("key") == p.key
    states = _states(ev, p) if ours else None
    if states is None:
        return None
    verdicts = _verdicts(p, ev, states, analysis)
    outcome, decided_by, line = _outcome(verdicts)
    alpha = budget.step_alpha(analysis.alpha, int(ev["segment"]), p.planned,
                              tests=p.spending)
    errors = custom.last_errors(state.checks)
    return {
        "outcome": str(outcome), "summary": line,
        "decided_by": decided_by.key if decided_by is not None else None,
        "step": ev.get("step"), "current": _current(ev, state, p),
        "segment": ev["segment"], "since": ev.get("since"), "checks": ev.get("checks"),
        "alpha_per_test": alpha, "fail_at": 1.0 / alpha, "pass_at": 1.0 / analysis.beta,
        "tests": [{"key": t.key, "version": t.version, "metric": t.metric,
                   "limit_ms": t.limit * 1000 if t.limit is not None else None,
                   "against": t.against, **_finite(v.to_dict()), "summary": summary(t, v)}
                  for t, v in verdicts if t.custom is None],
        # analysis.metrics, beside the built-in tests (dry-run ones included, marked).
        "metrics": [{"key": t.key, "name": t.custom.name, "version": t.version,
                     "against": t.against,
                     **_finite(custom.describe(t.custom, v)), "summary": summary(t, v),
                     "error": errors.get(t.custom.name)}
                    for t, v in verdicts if t.custom is not None],
    }


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinities: an e-value of 0 (log -inf) reads as 0."""
    return {k: (None if isinstance(x, float) and not math.isfinite(x) else x)
            for k, x in d.items()}
