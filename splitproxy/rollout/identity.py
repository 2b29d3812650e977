"""What a rollout *is*, so that everything else about a route may change without restarting it.

A rollout's identity is its version names (with which one is the baseline and which the
canary), `rollout.revision`, its steps, its strategy and blue-green's `active` color. Not the
endpoints (scaling or replacing pods is not a new build), not the weights (with steps they are
only the starting point; without steps, editing them is how an operator moves traffic within
the rollout), not thresholds, timeouts or webhooks. A new build behind the same endpoints is
announced by changing `rollout.revision`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from splitproxy.config.models import Route, Strategy


def _digest(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def identity(route: Route) -> str:
    rollout = route.rollout
    return _digest({
        "versions": list(route.versions),
        "baseline": route.baseline,
        "canary": route.canary,
        "strategy": route.strategy,
        "active": route.active,
        "steps": [s.identity_dump() for s in rollout.steps] if rollout else [],
        "revision": rollout.revision if rollout else None,
    })


def endpoints(route: Route) -> dict[str, tuple[str, ...]]:
    return {v: tuple(cfg.endpoints) for v, cfg in route.versions.items()}


# -- format 1 (splitproxy 0.1): kept only to recognise stored states on upgrade ----------------
def legacy_revision(route: Route, active: str | None = None) -> str:
    """The revision hash format 1 stored states under: it also counted the endpoints and the
    weights. `active` replaces the route's (to recognise a blue-green switch made while the
    proxy was down during the upgrade)."""
    if active is not None:
        route = route.model_copy(update={"active": active})  # its canary follows
    rollout = route.rollout
    ident = {
        "versions": {k: list(v.endpoints) for k, v in route.versions.items()},
        "weights": route.weights,
        "active": route.active,
        "steps": [s.identity_dump() for s in rollout.steps] if rollout else None,
        "revision": rollout.revision if rollout else None,
        "canary": route.canary,
    }
    return _digest(ident)


def legacy_candidates(route: Route) -> dict[str, str | None]:
    """{format-1 revision: the `active` color it was made with} for this route as configured,
    and for blue-green with each other color active."""
    out: dict[str, str | None] = {legacy_revision(route): route.active}
    if route.strategy == Strategy.BLUE_GREEN:
        for color in route.versions:
            out.setdefault(legacy_revision(route, color), color)
    return out
