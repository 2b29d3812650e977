"""The end of a release: a new rollout must not hand a promoted canary's traffic back to the
build it replaced without anyone noticing.

Once a rollout is promoted the canary serves everything and the guard no longer watches. The
release ends when the config says which version serves from now on: v2 becomes the stable
(its endpoints, or a new build behind the stable's), and the next rollout starts from there.
An edit that starts a new rollout while the old stable's endpoints are still what they were
at the promotion sends traffic back to the old build: the `rollout:` block deleted too early,
or the next release started before v2 was made the stable. It may also be a deliberate
rollback, so it is flagged (by `splitproxy check` and as a WARNING at the reload naming the
route), never refused: refusing would block the one edit an operator needs when a promoted
build turns out bad.

Endpoints are all the proxy can see. Where every build sits behind the same address (a
Kubernetes Service, a sidecar's own container) the flag cannot tell v1 from v2 there: point
the stable at the promoted canary's endpoints first, then back (README, "A release, end to
end").
"""

from __future__ import annotations

from dataclasses import dataclass

from splitproxy.config.models import Route
from splitproxy.rollout.state import Phase, RouteState


@dataclass(frozen=True, slots=True)
class Regression:
    """A version of the new config that would take traffic on endpoints of the old stable."""

    version: str
    endpoints: tuple[str, ...]  # its endpoints that served the versions left at the promotion
    promoted: str  # the version the previous rollout was promoted to

    def message(self) -> str:
        return (
            f"release: the rollout promoted to {self.promoted!r} is replaced by one that sends "
            f"traffic back to endpoints of the old stable, unchanged since the promotion: "
            f"{self.version} -> {', '.join(self.endpoints)}. Unless this is a rollback, make "
            f"the promoted build the stable first (point {self.version} at it, or deploy it "
            f"behind these endpoints and point {self.version} at {self.promoted}'s "
            f"endpoints meanwhile)")


def receivers(route: Route) -> list[str]:
    """The versions a route's rollout sends traffic to before it completes, in config order:
    its configured weights, and with steps the baseline (below 100) and the canary."""
    if route.strategy == "blue-green":
        return [v for v in route.versions if v == route.active]
    out = {v for v, w in route.configured_weights.items() if w > 0}
    rollout = route.rollout
    weights = [s.set_weight for s in rollout.steps if s.set_weight is not None] \
        if rollout is not None else []
    if any(w < 100 for w in weights):
        out.add(route.baseline)
    if route.canary is not None and any(w > 0 for w in weights):
        out.add(route.canary)
    return [v for v in route.versions if v in out]


def regressions(previous: RouteState | None, route: Route) -> list[Regression]:
    """What a new rollout of `route` sends back to the old stable, when the rollout before it
    (`previous`, of another identity) was promoted. Empty when nothing does, or when
    `previous` does not say which version it was promoted to (made before it recorded that)."""
    if previous is None or previous.phase != Phase.PROMOTED or previous.active is None:
        return []
    promoted = set(previous.endpoints.get(previous.active, ()))
    left = {e for version, eps in previous.endpoints.items() if version != previous.active
            for e in eps} - promoted
    out = []
    for version in receivers(route):
        back = tuple(e for e in route.versions[version].endpoints if e in left)
        if back:
            out.append(Regression(version, back, previous.active))
    return out
