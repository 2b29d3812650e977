"""The guard's side of the fold: which versions a measurement reads, and its verdict.

This is where a verdict source plugs in. Today a measurement is one window per version and
`analysis.judge` decides; a sequential test would instead fold each measurement's counts into
`RouteState.evidence` (restarted per step and run) and judge every non-baseline version.
"""

from __future__ import annotations

from splitproxy.analysis import Check, inconclusive, judge
from splitproxy.config import Analysis, Route
from splitproxy.rollout.events import Measurement
from splitproxy.rollout.machine import effective_active
from splitproxy.rollout.state import RouteState


def targets(state: RouteState, route: Route) -> tuple[str, str | None]:
    """(the version judged, the baseline it is compared with): the canary, or for blue-green
    the color switched to against the one that served before."""
    if route.strategy == "blue-green":
        return effective_active(state, route) or route.baseline, state.previous_active
    version = route.canary or route.baseline
    return version, (route.baseline if version != route.baseline else None)


def assess(
    state: RouteState, m: Measurement, analysis: Analysis, now: float
) -> tuple[Check, dict[str, dict[str, float]]]:
    """The verdict on one measurement, and the evidence to keep for this run and step."""
    evidence = state.evidence if (m.run, m.step) == (state.run, state.step) else {}
    if m.error is not None or m.samples is None or m.target not in m.samples:
        return inconclusive(analysis, m.target, now, m.error or "no reading"), evidence
    base = m.samples.get(m.baseline) if m.baseline is not None else None
    return judge(analysis, m.target, m.samples[m.target], base, now), evidence
