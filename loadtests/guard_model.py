"""Vectorised twins of `splitproxy.rollout.sequential` for the guard simulation, and its traffic.

Arrays are (rollouts, ticks) of per-tick counts, one tick per second, as the engine will hand
them to the module. The functions here compute, for every rollout at once, where the module's
verdict turns fail or pass; `tests/unit/test_guard_sim.py` checks them against the module
itself tick by tick, so the simulation measures the real thing.

Traffic (request counts and the slices they make) does not depend on the error process, so it
is drawn once per block and shared by every error process and level (common random numbers:
the cells of a table are compared on the same traffic).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from splitproxy.rollout.evidence import FAIL_BETS, FAIL_RATIOS, PASS_RATIOS

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

# Error processes: name -> (kind, size). "runs": runs of `size` consecutive failed requests
# (a run starts with probability p/size per request); "blips": every request in a window of
# `size` seconds fails (a GC pause, a dependency blip), windows at random offsets; "pod": a
# third of the requests fail for `size` seconds (one bad pod of three).
PROCESSES: dict[str, tuple[str, float]] = {
    "independent": ("runs", 1),
    "runs of 5": ("runs", 5),
    "runs of 10": ("runs", 10),
    "blips 0.3 s": ("blips", 0.3),
    "blips 1 s": ("blips", 1.0),
    "pod 30 s": ("pod", 30.0),
}


@dataclass(frozen=True)
class Slices:
    """Where slices close (`rows`, `cols`: row-major) and the requests each one holds."""

    rows: Ints
    cols: Ints
    shape: tuple[int, int]

    def sums(self, values: Ints) -> Ints:
        """Per slice, the sum of `values` over its ticks."""
        at = np.cumsum(values, axis=1)[self.rows, self.cols]
        out: Ints = np.where(self._starts(), at, at - np.concatenate([[0], at[:-1]]))
        return out

    def _starts(self) -> Bools:
        starts = np.ones(self.rows.size, dtype=bool)
        starts[1:] = self.rows[1:] != self.rows[:-1]
        return starts

    def cumulate(self, values: Floats) -> Floats:
        """Per-rollout running sums of per-slice values."""
        total = np.cumsum(values)
        starts = self._starts()
        first = np.maximum.accumulate(np.where(starts, np.arange(starts.size), 0))
        out: Floats = total - (total - values)[first]
        return out

    def first(self, hits: Bools) -> Ints:
        """Per rollout, the tick of the first slice where `hits`; the row length if none."""
        out = np.full(self.shape[0], self.shape[1], dtype=np.int64)
        where = np.nonzero(hits)[0]
        rows, index = np.unique(self.rows[where], return_index=True)
        out[rows] = self.cols[where[index]]
        return out

    def held(self, ok: Bools) -> Bools:
        """Per tick, the value `ok` of the last slice closed at or before it (False before)."""
        marks = np.zeros(self.shape, dtype=np.int8)
        marks[self.rows, self.cols] = np.where(ok, 1, -1)
        ticks = np.arange(self.shape[1])
        last = np.maximum.accumulate(np.where(marks != 0, ticks, 0), axis=1)
        out: Bools = np.take_along_axis(marks, last, 1) > 0
        return out


def slices(n: Ints, requests: int, seconds: float, other: Ints | None = None) -> Slices:
    """The module's rule: a slice closes at the end of the first tick (at time t + 1) where it
    holds `requests` requests (and one of `other`, the baseline's, if given) and has lasted
    `seconds` since the previous close (or the start, at 0)."""
    rows, ticks = n.shape
    closes = np.zeros(n.shape, dtype=bool)
    filling = np.zeros(rows, dtype=np.int64)
    others = np.zeros(rows, dtype=np.int64)
    since = np.zeros(rows)
    for t in range(ticks):
        filling += n[:, t]
        done = (filling >= requests) & (t + 1.0 - since >= seconds)
        if other is not None:
            others += other[:, t]
            done &= others > 0
            others[done] = 0
        closes[:, t] = done
        filling[done] = 0
        since[done] = t + 1.0
    r, c = np.nonzero(closes)
    return Slices(r.astype(np.int64), c.astype(np.int64), (rows, ticks))


def requests(rng: np.random.Generator, rows: int, ticks: int, rate: float) -> Ints:
    """Poisson arrivals: `rate` requests per one-second tick on average."""
    return rng.poisson(rate, size=(rows, ticks)).astype(np.int64)


def events(rng: np.random.Generator, n: Ints, p: float, process: str) -> Ints:
    """Per-tick event counts with long-run rate `p` per request, clustered as `process`."""
    kind, size = PROCESSES[process]
    if p <= 0.0:
        return np.zeros_like(n)
    if kind == "runs" and size == 1:
        return rng.binomial(n, min(p, 1.0)).astype(np.int64)
    if kind == "runs":
        return _runs(rng, n, p, int(size))
    share = 1.0 if kind == "blips" else 1.0 / 3.0
    cover = _windows(rng, n.shape, p / (size * share), size) * share
    out = np.zeros_like(n)
    hit = np.nonzero(cover)
    out[hit] = rng.binomial(n[hit], cover[hit])
    return out


def _runs(rng: np.random.Generator, n: Ints, p: float, length: int) -> Ints:
    """Runs of `length` consecutive failed requests; requests are numbered through each
    rollout, a run starts at a uniformly drawn one and may spill into later ticks."""
    rows, ticks = n.shape
    ends = np.cumsum(n, axis=1)
    totals = ends[:, -1]
    starts = rng.binomial(totals, min(p / length, 1.0))
    row = np.repeat(np.arange(rows), starts)
    first = np.floor(rng.random(row.size) * totals[row]).astype(np.int64)
    hit = first[:, None] + np.arange(length)[None, :]
    keep = hit < totals[row][:, None]
    span = int(totals.max()) + 1
    flat_ends = (ends + (np.arange(rows) * span)[:, None]).ravel()
    tick = np.searchsorted(flat_ends, (hit + (row * span)[:, None])[keep], side="right")
    counts = np.bincount(tick, minlength=rows * ticks).reshape(rows, ticks)
    return np.minimum(counts, n).astype(np.int64)


def _windows(rng: np.random.Generator, shape: tuple[int, int], per_tick: float,
             size: float) -> Floats:
    """The share of each tick covered by windows of `size` seconds, starting at random
    offsets, `per_tick` starts per tick on average (at most one per tick)."""
    rows, ticks = shape
    where = np.nonzero(rng.random(shape) < min(per_tick, 1.0))
    offset = rng.random(where[0].size)
    cover = np.zeros(shape)
    for k in range(int(size) + 2):
        # The window [u, u + size) seen from the k-th tick after the one it starts in.
        part = np.clip(offset + size - k, 0.0, 1.0) - np.clip(offset - k, 0.0, 1.0)
        col = where[1] + k
        ok = (col < ticks) & (part > 0)
        np.add.at(cover, (where[0][ok], col[ok]), part[ok])
    return np.minimum(cover, 1.0)


def _mixture(increments: Iterable[Floats], cuts: Slices, goal: float) -> Bools:
    """Per slice, whether the equal-weight mixture of the cumulated log increments has
    reached `goal`. The mean of e^(L - goal) can reach 1 only where the largest L reaches
    the goal, so the exact mean is computed there only."""
    logs = [cuts.cumulate(inc) for inc in increments]
    top: Floats = np.maximum.reduce(logs)
    hits: Bools = top >= goal
    where = np.nonzero(hits)[0]
    if where.size:
        mean = sum(np.exp(np.minimum(log[where] - goal, 60.0)) for log in logs) / len(logs)
        hits[where] = mean >= 1.0 - 1e-12
    return hits


def bet_fail_ticks(s: Ints, n: Ints, cuts: Slices, threshold: float, alpha: float) -> Ints:
    """First tick at which the burst-robust fail side (`sequential.judge`) fails."""
    excess = cuts.sums(s) / cuts.sums(n) / threshold - 1.0
    return cuts.first(_mixture((np.log1p(b * excess) for b in FAIL_BETS), cuts,
                               -np.log(alpha)))


def _binomial(s: Floats, n: Floats, q: float, ratios: tuple[float, ...]) -> Floats:
    terms = [s * np.log(r) - n * np.log1p((r - 1.0) * q) for r in ratios]
    top = np.maximum.reduce(terms)
    out: Floats = top + np.log(sum(np.exp(t - top) for t in terms) / len(terms))
    return out


@lru_cache(maxsize=64)
def _boundary(most: int, threshold: float, level: float, ratios: tuple[float, ...],
              rising: bool) -> Floats:
    """For each event count S = 0..most, where the binomial mixture crosses -log(level):
    the least trial count reaching it if it rises with trials (pass side), or the largest
    trial count still at it if it falls (fail side; -1 if none)."""
    s = np.arange(most + 1, dtype=float)
    goal = -np.log(level)
    lo, hi = s.copy(), np.full_like(s, 1e13)
    for _ in range(64):
        mid = np.floor((lo + hi) / 2.0) if rising else np.ceil((lo + hi) / 2.0)
        ok = _binomial(s, mid, threshold, ratios) >= goal
        if rising:
            hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid + 1)
        else:
            lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid - 1)
    if rising:
        return hi
    out: Floats = np.where(_binomial(s, s, threshold, ratios) >= goal, lo, -1.0)
    return out


def _table(most: int, threshold: float, level: float, ratios: tuple[float, ...],
           rising: bool) -> Floats:
    # Round the size up so that blocks share one cached table.
    return _boundary(1 << max(most, 1).bit_length(), threshold, level, ratios, rising)


def binomial_fail_ticks(s: Ints, n: Ints, threshold: float, alpha: float) -> Ints:
    """First tick at which the plain binomial mixture on cumulative counts fails (the test
    without the burst guard, for comparison)."""
    cs, cn = np.cumsum(s, 1), np.cumsum(n, 1)
    last = _table(int(cs.max()), threshold, alpha, FAIL_RATIOS, False)
    return first((cn > 0) & (cn <= last[cs]))


def pass_held(s: Ints, n: Ints, threshold: float, beta: float) -> Bools:
    """Per tick, whether the pass side (binomial mixture on cumulative counts) holds."""
    cs, cn = np.cumsum(s, 1), np.cumsum(n, 1)
    held: Bools = cn >= _table(int(cs.max()), threshold, beta, PASS_RATIOS, True)[cs]
    return held


def first(hit: Bools) -> Ints:
    """The first True per row, or the row length if none."""
    out: Ints = np.where(hit.any(axis=1), hit.argmax(axis=1), hit.shape[1]).astype(np.int64)
    return out


def ratio_verdicts(sc: Ints, sb: Ints, nc: Ints, nb: Ints, cuts: Slices, margin: float,
                   alpha: float, beta: float) -> tuple[Ints, Bools]:
    """`judge_ratio`: the first fail tick, and per tick whether the pass side holds."""
    ec, eb = cuts.sums(sc), cuts.sums(sb)
    allowed = (1.0 + margin) * cuts.sums(nc)
    share = allowed / (allowed + cuts.sums(nb))
    total = ec + eb
    live = total > 0
    excess = np.where(live, ec / np.maximum(total, 1) / share - 1.0, 0.0)
    fails = _mixture((np.log1p(b * excess) for b in FAIL_BETS), cuts, -np.log(alpha))
    passes = _mixture(
        (np.where(live, ec * np.log(r) - total * np.log1p((r - 1.0) * share), 0.0)
         for r in PASS_RATIOS), cuts, -np.log(beta))
    return cuts.first(fails), cuts.held(passes)
