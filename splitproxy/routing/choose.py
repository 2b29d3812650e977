"""Which version answers a request: a pure function of a route's plan and the request's facts.

The routing order, per route (README "Routing order" says the same):

1. Pin header (only when `sticky.pin_header` is configured; with `sticky.pin_token` only as
   `<version>:<token>`): that version, even at weight 0. Blue-green's preview header works
   the same way and reaches the color not serving.
2. Header/cookie routes of the current step (`steer`): the canary, even at weight 0.
3. Sticky cookie `<version>.<run>`: that version while the cookie's run is the rollout's
   current run and the version has weight > 0. A cookie of another run (an older revision, a
   retry, a blue-green switch) or of a version out of traffic is ignored.
4. Hash key: the bucket of (route, key); canaries own the lowest buckets.
5. Otherwise the low-variance weighted sequence.

Nothing here does I/O, reads a clock or imports asyncio.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Final

BUCKETS: Final = 10_000
# Weights are percents down to 0.01; they are scaled to integer hundredths (basis points of
# a 100 total) before the gcd, so 99.5/0.5 is the exact sequence 199:1 and a 0.01 share owns
# exactly one bucket of 10,000. Whole-number weights give the same schedule as before.
SCALE: Final = 100
# Caps the schedule's length (one full period) so a table build stays cheap and bounded.
MAX_PERIOD: Final = 100_000

_upper = itemgetter(0)


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """Everything `choose` needs for one route, computed once per routing-table build."""

    name: str
    versions: tuple[str, ...]  # in config order
    # `int | float`, not `float`: compiled by mypyc, a `float` holds 0 as 0.0, and /status
    # shows whole weights as the ints they were configured as.
    weights: tuple[int | float, ...]  # effective weights, parallel to `versions`
    baseline: str  # owns the highest buckets; the others take the lowest, in config order
    schedule: tuple[str, ...]  # low-variance weighted sequence; empty when every weight is 0
    bucket_bounds: tuple[tuple[int, str], ...]  # ascending (exclusive upper bound, version)
    live: frozenset[str]  # versions with weight > 0
    canary: str | None = None  # where requests matching a header route of the step go


def make_plan(
    name: str, versions: tuple[str, ...], weights: Mapping[str, int | float], baseline: str,
    canary: str | None = None,
) -> RoutePlan:
    if len(set(versions)) != len(versions):
        raise ValueError(f"route {name!r}: duplicate version names in {versions!r}")
    if baseline not in versions:
        raise ValueError(f"route {name!r}: baseline {baseline!r} is not one of {versions!r}")
    unknown = set(weights) - set(versions)
    if unknown:
        raise ValueError(f"route {name!r}: weights for unknown versions {sorted(unknown)!r}")
    ws = tuple(weights.get(v, 0) for v in versions)
    if any(w < 0 for w in ws):
        raise ValueError(f"route {name!r}: negative weight in {weights!r}")
    if canary is not None and canary not in versions:
        raise ValueError(f"route {name!r}: canary {canary!r} is not one of {versions!r}")
    units = tuple(round(w * SCALE) for w in ws)
    return RoutePlan(
        name=name,
        versions=versions,
        weights=ws,
        baseline=baseline,
        schedule=_schedule(versions, units),
        bucket_bounds=_bucket_bounds(versions, units, baseline),
        live=frozenset(v for v, u in zip(versions, units, strict=True) if u > 0),
        canary=canary,
    )


def _reduce(weights: tuple[int, ...]) -> tuple[int, ...]:
    """The shortest weights with the same ratios, scaled down when the period would be too long."""
    total = sum(weights)
    if total == 0:
        return weights
    g = math.gcd(*weights)
    weights = tuple(w // g for w in weights)
    total //= g
    if total <= MAX_PERIOD:
        return weights
    # Largest-remainder rounding keeps the total exact; a version that had weight keeps >= 1
    # so scaling never silently takes a live version out of rotation.
    exact = [w * MAX_PERIOD / total for w in weights]
    scaled = [max(1, int(x)) if w else 0 for w, x in zip(weights, exact, strict=True)]
    spare = MAX_PERIOD - sum(scaled)
    by_remainder = sorted(range(len(weights)), key=lambda i: scaled[i] - exact[i])
    for i in by_remainder[: max(spare, 0)]:
        scaled[i] += 1
    g = math.gcd(*scaled)
    return tuple(w // g for w in scaled)


def _schedule(versions: tuple[str, ...], weights: tuple[int, ...]) -> tuple[str, ...]:
    """One period of nginx's smooth weighted round robin over the reduced weights.

    Each version's running count never strays more than one request from its exact share, so
    any window of consecutive requests is within about +-1 of the weight. After one period every
    accumulator is back at zero, which is why repeating the tuple equals running SWRR forever.
    """
    reduced = _reduce(weights)
    total = sum(reduced)
    live = [(v, w) for v, w in zip(versions, reduced, strict=True) if w > 0]
    current = [0] * len(live)
    out: list[str] = []
    for _ in range(total):
        best = 0
        for i, (_, w) in enumerate(live):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(live[best][0])
    return tuple(out)


def _bucket_bounds(
    versions: tuple[str, ...], weights: tuple[int, ...], baseline: str
) -> tuple[tuple[int, str], ...]:
    """Canaries take the lowest buckets, the baseline the top, so a canary's range only ever
    grows upward into the baseline's as its weight rises and users move one way only."""
    total = sum(weights)
    if total == 0:
        return ()
    pairs = [(v, w) for v, w in zip(versions, weights, strict=True) if v != baseline]
    pairs.append((baseline, weights[versions.index(baseline)]))
    bounds: list[tuple[int, str]] = []
    cum = 0
    for v, w in pairs:
        cum += w
        if w > 0:
            bounds.append((round(cum * BUCKETS / total), v))
    return tuple(bounds)


def bucket(route: str, key: bytes) -> int:
    """A fixed hash of (route, key) in [0, BUCKETS): the same in every process and machine."""
    digest = hashlib.blake2b(route.encode() + b"\0" + key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def sticky_value(version: str, run: str) -> str:
    """The sticky cookie's value: the version and the run it was earned in."""
    return f"{version}.{run}"


def pin_values(versions: tuple[str, ...], token: str | None) -> dict[bytes, str]:
    """The pin header values honoured, each to its version: the version name, or
    `<version>:<token>` when a token is configured. A lookup in this dict compares a value
    with the secret only after its (randomised) hash matched, so it gives away nothing by
    timing."""
    return {(v if token is None else f"{v}:{token}").encode("latin-1"): v for v in versions}


def choose(
    plan: RoutePlan, seq: int, pin: str | None, cookie: str | None, hash_key: bytes | None,
    steer: bool = False,
) -> str | None:
    """The version for one request, or None when no version may take it (all weights 0).

    `pin` and `cookie` are versions already resolved from the request (a pin honoured, a
    cookie of the current run), or None; `steer`: the request matches a header route of the
    current step (`steer.steered`)."""
    # Pins reach weight-0 versions on purpose: that is how a blue/green preview is tested.
    if pin is not None and pin in plan.versions:
        return pin
    # So do header routes: testers reach the canary before it takes any weight.
    if steer and plan.canary is not None:
        return plan.canary
    if not plan.live:
        return None
    # A cookie for a version that lost its weight (e.g. after an abort) must not keep users there.
    if cookie is not None and cookie in plan.live:
        return cookie
    if hash_key:
        bounds = plan.bucket_bounds
        return bounds[bisect_right(bounds, bucket(plan.name, hash_key), key=_upper)][1]
    schedule = plan.schedule
    return schedule[seq % len(schedule)]
