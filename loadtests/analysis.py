"""What a load test proves: shares with intervals, a chi-square test, stickiness, errors, revert.

Pure functions over recorded `Sample`s; no locust, no I/O, no clock. scipy is not a dependency,
so the chi-square survival function (the regularized upper incomplete gamma function) is
computed here, as in Numerical Recipes' `gammq`.

The statistical unit for shares is an *assignment*, one independent routing decision:

* an identified user (hash id): its version in a stretch of constant weights. With a sticky
  cookie configured, only users whose session *started* in that stretch count: a returning
  user's cookie keeps the version it got under the previous weights, by design;
* a cookie-only session: its first answer (later ones follow the cookie);
* an anonymous request: each one (the proxy's low-variance weighted sequence; its count varies
  less than a binomial one, so the test is conservative for it).

Counting every request of a sticky user instead would multiply the variance by its requests per
session and fail the chi-square test for a correct proxy.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Z95 = 1.959963984540054  # two-sided 95% normal quantile
Z999 = 3.2905267314919255  # two-sided 99.9%

USER, COOKIE, ANON, PINNED = "user", "cookie", "anon", "pinned"  # session kinds
NO_VERSION = "(proxy)"  # answers without a version header: made by the proxy itself, or none


@dataclass(frozen=True, slots=True)
class Sample:
    """One request as a locust user saw it."""

    t: float  # wall clock when it was sent
    latency_ms: float
    status: int  # 0: no response at all (connection refused or reset, timeout)
    version: str | None  # from the version header; None when the answer carried none
    user: str  # session id: the X-User-Id sent, or a generated id when none was sent
    kind: str  # USER, COOKIE, ANON or PINNED
    instance: str | None = None  # X-Upstream-Instance: which endpoint answered

    @property
    def end(self) -> float:
        return self.t + self.latency_ms / 1000

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400

    @property
    def error(self) -> bool:
        """What the proxy's analysis counts too: 5xx and no response."""
        return self.status == 0 or self.status >= 500

    def to_row(self) -> list[Any]:
        return [round(self.t, 4), round(self.latency_ms, 2), self.status, self.version,
                self.user, self.kind, self.instance]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Sample:
        return cls(float(row[0]), float(row[1]), int(row[2]), row[3], str(row[4]), str(row[5]),
                   row[6] if len(row) > 6 else None)


@dataclass(frozen=True, slots=True)
class Epoch:
    """A stretch of time with constant weights, as the proxy reported them."""

    start: float
    end: float
    weights: Mapping[str, int]
    label: str = ""

    def __contains__(self, t: float) -> bool:
        return self.start <= t < self.end


# --- statistics ---------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there is no data."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} not in 0..{n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At p == 0 or 1 one bound is exactly 0 or 1; float noise would miss it by an ulp.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _gamma_series(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its series; for x < a + 1."""
    term = total = 1.0 / a
    ap = a
    for _ in range(10_000):
        ap += 1
        term *= x / ap
        total += term
        if abs(term) < abs(total) * 1e-15:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_continued_fraction(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by Lentz's continued fraction; x >= a + 1."""
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X ~ chi-square with `dof` degrees of freedom."""
    if dof < 1:
        raise ValueError("dof must be >= 1")
    if math.isinf(statistic):
        return 0.0
    if statistic <= 0:
        return 1.0
    a, x = dof / 2, statistic / 2
    if x < a + 1:
        return max(0.0, 1.0 - _gamma_series(a, x))
    return min(1.0, _gamma_continued_fraction(a, x))


@dataclass(frozen=True, slots=True)
class ChiSquare:
    statistic: float
    dof: int
    p_value: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        stat = self.statistic if math.isfinite(self.statistic) else "inf"
        return {"statistic": stat, "dof": self.dof, "p_value": self.p_value, "n": self.n}


def chi_square(observed: Mapping[str, int], weights: Mapping[str, int]) -> ChiSquare:
    """Goodness of fit of `observed` counts to the split `weights` asks for.

    A version with weight 0 that was observed at all makes the statistic infinite (p = 0): it
    should have had no traffic. With one live version there is nothing to test (dof 0): p is 1
    when everything went to it.
    """
    n = sum(observed.values())
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("weights must add up to > 0")
    unknown = set(observed) - set(weights)
    live = [v for v, w in weights.items() if w > 0]
    if any(observed.get(v, 0) for v, w in weights.items() if w == 0) or any(
        observed[v] for v in unknown
    ):
        return ChiSquare(math.inf, max(1, len(live) - 1), 0.0, n)
    if n == 0:
        return ChiSquare(0.0, max(1, len(live) - 1), 1.0, 0)
    if len(live) < 2:
        return ChiSquare(0.0, 0, 1.0, n)
    statistic = 0.0
    for v in live:
        expected = n * weights[v] / total
        statistic += (observed.get(v, 0) - expected) ** 2 / expected
    dof = len(live) - 1
    return ChiSquare(statistic, dof, chi2_sf(statistic, dof), n)


# --- what the users saw -------------------------------------------------------------------------


def routed(samples: Iterable[Sample]) -> list[Sample]:
    """Samples the proxy routed by its split: not pinned, and answered by some version."""
    return [s for s in samples if s.kind != PINNED and s.version is not None]


def assignments(samples: Sequence[Sample], epoch: Epoch, cookie_sticky: bool) -> Counter[str]:
    """The independent routing decisions inside `epoch`, counted per version (see above)."""
    first_ever: dict[str, float] = {}
    for s in samples:
        if s.user not in first_ever or s.t < first_ever[s.user]:
            first_ever[s.user] = s.t
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    for s in sorted(routed(samples), key=lambda s: s.t):
        if s.t not in epoch:
            continue
        if s.kind == ANON or (s.kind == COOKIE and not cookie_sticky):
            counts[s.version or NO_VERSION] += 1
            continue
        if s.user in seen:
            continue
        if (s.kind == COOKIE or cookie_sticky) and first_ever[s.user] not in epoch:
            continue  # its cookie was set under other weights
        seen.add(s.user)
        counts[s.version or NO_VERSION] += 1
    return counts


def share_report(counts: Mapping[str, int], weights: Mapping[str, int],
                 z: float = Z95) -> dict[str, Any]:
    """Observed share per version with its Wilson interval, next to the configured share."""
    n = sum(counts.values())
    total = sum(weights.values()) or 1
    versions = list(weights) + [v for v in counts if v not in weights]
    out: dict[str, Any] = {}
    for v in versions:
        k = counts.get(v, 0)
        lo, hi = wilson_interval(k, n, z)
        configured = weights.get(v, 0) / total
        out[v] = {
            "count": k,
            "share": k / n if n else None,
            "interval": [lo, hi],
            "configured": configured,
            "within": lo <= configured <= hi if n else False,
        }
    return out


def sticky_violations(samples: Sequence[Sample], epochs: Sequence[Epoch],
                      kinds: Iterable[str] = (USER,)) -> list[dict[str, Any]]:
    """Sessions of `kinds` that saw more than one version inside one epoch (must be none)."""
    wanted = set(kinds)
    seen: dict[tuple[str, int], set[str]] = defaultdict(set)
    for s in routed(samples):
        if s.kind not in wanted:
            continue
        for i, epoch in enumerate(epochs):
            if s.t in epoch:
                seen[s.user, i].add(s.version or NO_VERSION)
    return [{"user": user, "epoch": i, "versions": sorted(vs)}
            for (user, i), vs in sorted(seen.items()) if len(vs) > 1]


def backward_moves(samples: Sequence[Sample], order: Sequence[str],
                   kinds: Iterable[str] = (USER,)) -> tuple[list[dict[str, Any]], int]:
    """Sessions that moved against `order`, the one allowed direction of travel: with order
    (stable, canary), a move canary -> stable while the canary's weight grows is backward.

    Returns the offenders and how many sessions moved forward, for context.
    """
    rank = {v: i for i, v in enumerate(order)}
    wanted = set(kinds)
    by_user: dict[str, list[Sample]] = defaultdict(list)
    for s in routed(samples):
        if s.kind in wanted and s.version in rank:
            by_user[s.user].append(s)
    backward: list[dict[str, Any]] = []
    forward = 0
    for user, seq in sorted(by_user.items()):
        seq.sort(key=lambda s: s.t)
        moved = False
        for a, b in zip(seq, seq[1:], strict=False):
            assert a.version is not None and b.version is not None
            if rank[b.version] < rank[a.version]:
                backward.append({"user": user, "from": a.version, "to": b.version, "t": b.t})
                break
            moved = moved or rank[b.version] > rank[a.version]
        forward += moved
    return backward, forward


def errors_by_version(samples: Iterable[Sample]) -> dict[str, dict[str, int]]:
    """Requests, errors (5xx or no answer) and not-ok answers per version."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"requests": 0, "errors": 0, "not_ok": 0})
    for s in samples:
        row = out[s.version or NO_VERSION]
        row["requests"] += 1
        row["errors"] += s.error
        row["not_ok"] += not s.ok
    return dict(sorted(out.items()))


def revert_timing(samples: Sequence[Sample], canary: str, abort_time: float | None,
                  slow_ms: float | None = None, margin: float = 0.1) -> dict[str, Any]:
    """How a revert looked from the users' side (pinned requests are left out).

    A canary *error* is a 5xx or, when `slow_ms` is given, an answer slower than that. Time to
    revert runs from the first error a user saw to the last canary answer a user got, both by
    when the answer arrived. Canary answers to requests sent more than `margin` after
    `abort_time` are the ones that should not exist.
    """
    ours = [s for s in routed(samples) if s.version == canary]

    def bad(s: Sample) -> bool:
        return s.error or (slow_ms is not None and s.latency_ms > slow_ms)

    errors = [s for s in ours if bad(s)]
    first_error = min((s.end for s in errors), default=None)
    last_canary = max((s.end for s in ours), default=None)
    after = [s for s in ours if abort_time is not None and s.t > abort_time + margin]
    return {
        "first_canary_error": first_error,
        "last_canary_response": last_canary,
        "time_to_revert_s": (last_canary - first_error)
        if first_error is not None and last_canary is not None else None,
        "abort_time": abort_time,
        "abort_after_first_error_s": (abort_time - first_error)
        if abort_time is not None and first_error is not None else None,
        "canary_errors_seen": len(errors),
        "users_who_saw_canary_errors": len({s.user for s in errors}),
        "canary_responses_after_abort": len(after),
    }


def series_key(s: Sample) -> str:
    """The version, with pinned traffic apart: it is not part of the split."""
    v = s.version or NO_VERSION
    return f"{v} (pinned)" if s.kind == PINNED else v


def timeseries(samples: Iterable[Sample], t0: float, t1: float, bin_s: float = 1.0,
               key: Callable[[Sample], str] = series_key) -> dict[str, dict[str, list[float]]]:
    """Per `key` (version): requests/s, error rate and p99 latency (ms) in bins of `bin_s`
    seconds from t0; NaN where a bin has no request."""
    bins = max(1, math.floor((t1 - t0) / bin_s))  # whole bins only: a partial one reads low
    latencies: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in range(bins)])
    errors: dict[str, list[int]] = defaultdict(lambda: [0] * bins)
    for s in samples:
        i = int((s.t - t0) // bin_s)
        if 0 <= i < bins:
            v = key(s)
            latencies[v][i].append(s.latency_ms)
            errors[v][i] += s.error
    out: dict[str, dict[str, list[float]]] = {}
    for v in sorted(latencies):
        counts = [len(b) for b in latencies[v]]
        out[v] = {
            "rps": [c / bin_s for c in counts],
            "error_rate": [e / c if c else math.nan
                           for e, c in zip(errors[v], counts, strict=True)],
            "p99_ms": [quantile(b, 0.99) for b in latencies[v]],
        }
    return out


def quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
