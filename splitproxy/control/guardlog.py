"""What the guard's checks say in the log, at WARNING: a breach (a version's estimate over
its limit before the evidence can abort it) once per run, step and test, and an automatic
abort, each with the route, the reason and the numbers, also as `extra` fields for JSON logs
(`event`: `guard_breach`, `guard_abort`). The per-check detail stays in /status."""

from __future__ import annotations

import logging
from typing import Any

from splitproxy.config.models import Route
from splitproxy.rollout import RouteState, guard, machine
from splitproxy.rollout.state import Phase

log = logging.getLogger("splitproxy.rollout")

TestKey = tuple[str, int, str, str, str | None]  # run, step, version, metric, against


class GuardLog:
    def __init__(self) -> None:
        self._breached: dict[str, set[TestKey]] = {}

    def forget(self, name: str) -> None:
        """A new run or a removed route: breaches are news again."""
        self._breached.pop(name, None)

    def checked(self, name: str, state: RouteState, route: Route) -> None:
        """After a check was folded in: the tests now over their limit, news only."""
        if state.phase in (Phase.ABORTED, Phase.PROMOTED):
            return  # an abort has its own line; promoted is final
        report = guard.report(state, route)
        if report is None or not report["current"]:
            return
        seen = self._breached.setdefault(name, set())
        for test in report["tests"]:
            limit = test.get("threshold", test.get("allowed_ratio"))
            estimate = test.get("estimate")
            if test["outcome"] == "pass" or estimate is None or limit is None \
                    or estimate <= limit:
                continue
            key = (state.run, state.step, test["version"], test["metric"], test["against"])
            if key in seen:
                continue
            seen.add(key)
            log.warning("rollout route=%s breach: %s %s over its limit, not yet conclusive "
                        "(aborts once the evidence reaches %.0f): %s", name, test["version"],
                        test["metric"], report["fail_at"], test["summary"],
                        extra=_fields(name, state, route, "guard_breach",
                                      version=test["version"], metric=test["metric"],
                                      estimate=estimate, limit=limit,
                                      summary=test["summary"]))

    def aborted(self, name: str, state: RouteState, route: Route) -> None:
        """The guard took the canary out of traffic."""
        check = state.checks[-1] if state.checks else {}
        weights = machine.weights(state, route)
        log.warning("rollout route=%s automatic abort: weights=%s reason=%s (last check: "
                    "requests=%s)", name, weights, state.abort_reason,
                    check.get("requests", {}),
                    extra=_fields(name, state, route, "guard_abort", weights=weights,
                                  reason=state.abort_reason,
                                  check_requests=check.get("requests")))


def _fields(name: str, state: RouteState, route: Route, event: str,
            **more: Any) -> dict[str, Any]:
    return {"route": name, "event": event, "phase": str(state.phase), "run": state.run,
            "step": state.step, "revision": route.rollout.revision if route.rollout else None,
            **more}
