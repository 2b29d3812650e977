"""Custom gauge metrics' error rates, measured: `python -m loadtests.gauge_sim [--rollouts N]`.

A gauge test (`splitproxy.rollout.gauges`) judges the signs of block means. Its bound (a
healthy canary is aborted with probability at most alpha) assumes that, given the blocks
before it, a healthy canary's block is over the limit with probability at most 1/2: exact
for independent blocks, not for a gauge whose memory outlasts a block. This measures how far
that matters, with seeded gauges of known memory, judged exactly as the module judges
(`tests/loadtests/test_gauge_sim.py` checks the vectorised test against the module):

* readings once a second (`analysis.interval: 1s`), blocks of `block` seconds (60: the
  default for a metric with `interval: 1m`);
* a gauge = its level + noise of standard deviation 1 per reading ("sigma"), the noise being
  independent, AR(1) with a memory (time constant) of a quarter block to two blocks, a
  Prometheus rate over one block read from 15-second scrapes (what `rate(x[{{interval}}])`
  returns), or AR noise plus an hour-long load wave of amplitude 1 sigma;
* rollouts of 5 steps of at least 10 minutes, each ending when its timer is up and the pass
  holds at that check (held at most 20 minutes, then moved on anyway so every rollout runs
  all 5); the tests restart at each step with alpha 0.01 / 6 (`budget.step_alpha`), one
  metric; beta 0.05. Each step draws a fresh stretch of the gauge.

The comparison against the baseline (`paired`) uses a multiplicative shared load (a CPU share
follows the traffic both versions get): canary = level x (1 + load) + noise, baseline =
1 + load + noise, margin 0.2, noise sigma 0.1; "at the limit" is level 1.2.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from splitproxy.rollout.budget import step_alpha
from splitproxy.rollout.gauges import SIGN_BETS

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

# name -> (kind, memory in blocks)
PROCESSES: dict[str, tuple[str, float]] = {
    "independent": ("iid", 0.0),
    "AR, memory 1/4 block": ("ar", 0.25),
    "AR, memory 1/2 block": ("ar", 0.5),
    "AR, memory 1 block": ("ar", 1.0),
    "AR, memory 2 blocks": ("ar", 2.0),
    "rate over 1 block, 15 s scrapes": ("rate", 1.0),
    "load wave 1 h + AR 1/2 block": ("wave", 0.5),
}
SCRAPE = 15  # seconds between the samples a rate() is computed from
WAVE = 3600.0  # seconds: the period of the load wave


@dataclass(frozen=True)
class Plan:
    steps: int = 5
    step_seconds: int = 600
    hold_seconds: int = 1200
    block: int = 60
    alpha: float = 0.01
    beta: float = 0.05
    tests: int = 1
    margin: float = 0.2  # comparisons
    noise: float = 0.1  # comparisons: the noise's sigma, relative to the baseline's level

    def alpha_at(self, step: int) -> float:
        return step_alpha(self.alpha, step, self.steps, self.tests)


def ar(rng: np.random.Generator, count: int, ticks: int, memory: float) -> Floats:
    """AR(1) noise with standard deviation 1 and time constant `memory` ticks, started from
    its stationary distribution."""
    phi = math.exp(-1.0 / memory)
    shocks = rng.standard_normal((count, ticks)) * math.sqrt(1.0 - phi * phi)
    out = np.empty((count, ticks))
    out[:, 0] = rng.standard_normal(count)
    for t in range(1, ticks):
        out[:, t] = phi * out[:, t - 1] + shocks[:, t]
    return out


def noise(rng: np.random.Generator, count: int, ticks: int, process: str,
          block: int) -> Floats:
    """Per-reading noise of one process, standard deviation about 1."""
    kind, memory = PROCESSES[process]
    if kind == "iid":
        return rng.standard_normal((count, ticks))
    if kind == "ar":
        return ar(rng, count, ticks, memory * block)
    if kind == "rate":
        window = int(memory * block)
        # Independent per-second increments of a counter; the rate over `window` as of the
        # last scrape (scaled to standard deviation 1).
        csum = np.cumsum(rng.standard_normal((count, ticks + window + SCRAPE)), axis=1)
        t = np.arange(ticks) + window + SCRAPE
        scraped = t - (t % SCRAPE)
        rate: Floats = (csum[:, scraped] - csum[:, scraped - window]) / math.sqrt(window)
        return rate
    phase = rng.uniform(0, WAVE, (count, 1))
    wave = np.sin(2 * math.pi * (np.arange(ticks) + phase) / WAVE)
    return ar(rng, count, ticks, memory * block) + wave


def block_means(x: Floats, block: int) -> Floats:
    count, ticks = x.shape
    n = ticks // block
    means: Floats = x[:, : n * block].reshape(count, n, block).mean(axis=2)
    return means


def log_e(wins: Bools) -> Floats:
    """The pass side's log e-value after each block: the mixture over SIGN_BETS of products
    of (1 + b) per win and (1 - b) per other block (as `gauges._bets`)."""
    bets = np.array(SIGN_BETS)
    steps = np.where(wins[..., None], np.log1p(bets), np.log1p(-bets))
    cum = np.cumsum(steps, axis=1)
    top = cum.max(axis=2, keepdims=True)
    out: Floats = (top + np.log(np.exp(cum - top).mean(axis=2, keepdims=True)))[..., 0]
    return out


def fail_log_e(worse: Bools) -> Floats:
    """The fail side's log e-value after each block: the bets mixed over the block they start
    at, weights 1/((k+1)(k+2)) (as `gauges._mix_starts`)."""
    bets = np.array(SIGN_BETS)
    count, nb = worse.shape
    e = np.ones((count, bets.size))
    out = np.empty((count, nb))
    for n in range(nb):
        later = 1.0 / (n + 2)
        f = np.where(worse[:, n, None], 1.0 + bets, 1.0 - bets)
        e = (e - later) * f + later
        out[:, n] = np.log(e.mean(axis=1))
    return out


def first(mask: Bools, default: int) -> npt.NDArray[np.int64]:
    """Per row, the first True column (`default` where none)."""
    out: npt.NDArray[np.int64] = np.where(mask.any(axis=1), mask.argmax(axis=1), default)
    return out


def signs(rng: np.random.Generator, plan: Plan, process: str, level: Floats | float,
          count: int, ticks: int, paired: bool) -> tuple[Bools, Bools]:
    """(worse, better) per block: the block mean against the limit (0; paired: the baseline's
    block mean x (1 + margin)), direction below."""
    if not paired:
        x = level + noise(rng, count, ticks, process, plan.block)
        m = block_means(x, plan.block)
        return m > 0.0, m < 0.0
    load = 0.3 * noise(rng, count, ticks, process, plan.block)  # shared by both versions
    canary = level * (1 + load) + plan.noise * rng.standard_normal((count, ticks))
    base = 1.0 + load + plan.noise * rng.standard_normal((count, ticks))
    c, b = block_means(canary, plan.block), block_means(base, plan.block)
    allowed = b + plan.margin * np.abs(b)
    return c > allowed, c < allowed


def rollouts(rng: np.random.Generator, plan: Plan, process: str, level: float, count: int,
             paired: bool = False) -> tuple[float, float]:
    """(share aborted, share promoted with a pass at every step) over whole rollouts."""
    aborted = np.zeros(count, dtype=bool)
    passed = np.ones(count, dtype=bool)
    due = plan.step_seconds // plan.block - 1  # the block whose check ends the timer
    for step in range(plan.steps):
        worse, better = signs(rng, plan, process, level, count, plan.hold_seconds, paired)
        fail = fail_log_e(worse) >= -math.log(plan.alpha_at(step))
        ok = log_e(better) >= -math.log(plan.beta)
        ok[:, :due] = False
        nb = worse.shape[1]
        end = first(ok, nb - 1)
        passed &= ok.any(axis=1)
        aborted |= first(fail, nb) <= end
    return float(aborted.mean()), float((passed & ~aborted).mean())


def times_to(rng: np.random.Generator, plan: Plan, process: str, level: Floats | float,
             count: int, horizon: int, paired: bool = False,
             fail: bool = True) -> Floats:
    """Seconds from the step's start to the check that fails (or passes), inf for never."""
    worse, better = signs(rng, plan, process, level, count, horizon, paired)
    goal = -math.log(plan.alpha_at(0) if fail else plan.beta)
    hit = (fail_log_e(worse) if fail else log_e(better)) >= goal
    idx = first(hit, -1).astype(float)
    out: Floats = np.where(idx >= 0, (idx + 1) * plan.block, np.inf)
    return out


def _q(times: Floats, q: float) -> str:
    ordered = np.sort(times)  # the q-quantile as an order statistic: inf sorts last
    v = float(ordered[max(0, math.ceil(q * ordered.size) - 1)])
    if not math.isfinite(v):
        return "never"
    return f"{v / 60:.0f}m" if v >= 600 else f"{v:.0f}s"


def ramp(horizon: int, start: float, stop: float, seconds: int) -> Floats:
    """A rising gauge: from `start` to `stop` sigma over `seconds`, then level."""
    t = np.arange(horizon)
    out: Floats = np.minimum(start + (stop - start) * t / seconds, stop)[None, :]
    return out


def false_aborts(rng: np.random.Generator, plan: Plan, n: int) -> None:
    print("False aborts over a whole rollout (promoted on evidence), level in sigma:")
    print("| gauge | at the limit | 0.25 below | 0.5 below |\n| --- | --- | --- | --- |")
    for process in PROCESSES:
        cells = [rollouts(rng, plan, process, -d, n) for d in (0.0, 0.25, 0.5)]
        print(f"| {process} | " + " | ".join(f"{a:.1%} ({p:.0%})" for a, p in cells) + " |")


def abort_times(rng: np.random.Generator, plan: Plan, k: int, horizon: int) -> None:
    print(f"\nTime to abort, median / p95 ({horizon // 3600} h horizon):")
    print("| gauge | +0.25 | +0.5 | +1 | +2 | rising -1 -> +2 in 10 min |")
    print("| --- | --- | --- | --- | --- | --- |")
    for process in PROCESSES:
        times = [times_to(rng, plan, process, d, k, horizon) for d in (0.25, 0.5, 1.0, 2.0)]
        # Seconds after the ramp crosses the limit (at 200 s).
        times.append(times_to(rng, plan, process, ramp(horizon, -1.0, 2.0, 600), k,
                              horizon) - 200)
        print(f"| {process} | " + " | ".join(f"{_q(t, 0.5)} / {_q(t, 0.95)}" for t in times)
              + " |")


def pass_times(rng: np.random.Generator, plan: Plan, k: int, horizon: int) -> None:
    print("\nTime to pass, median / p95:")
    print("| gauge | 0.25 below | 0.5 below | 1 below |\n| --- | --- | --- | --- |")
    for process in PROCESSES:
        times = [times_to(rng, plan, process, -d, k, horizon, fail=False)
                 for d in (0.25, 0.5, 1.0)]
        print(f"| {process} | " + " | ".join(f"{_q(t, 0.5)} / {_q(t, 0.95)}" for t in times)
              + " |")


def paired(rng: np.random.Generator, plan: Plan, n: int, k: int, horizon: int) -> None:
    print("\nAgainst the baseline (margin 0.2, shared load), false aborts / time to abort:")
    print("| shared load | 1.0x allowed | 0.9x | abort at 1.25x | 1.5x |")
    print("| --- | --- | --- | --- | --- |")
    allowed = 1.0 + plan.margin
    for process in ("independent", "AR, memory 1 block", "load wave 1 h + AR 1/2 block"):
        fa = [rollouts(rng, plan, process, allowed * r, n, paired=True)[0] for r in (1.0, 0.9)]
        ta = [times_to(rng, plan, process, allowed * r, k, horizon, paired=True)
              for r in (1.25, 1.5)]
        print(f"| {process} | {fa[0]:.1%} | {fa[1]:.1%} | "
              + " | ".join(f"{_q(t, 0.5)} / {_q(t, 0.95)}" for t in ta) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20240615)
    parser.add_argument("--block", type=int, default=60)
    args = parser.parse_args()
    plan = Plan(block=args.block)
    rng = np.random.default_rng(args.seed)
    began = time.monotonic()
    n, k, horizon = args.rollouts, max(100, args.rollouts // 2), 7200
    print(f"blocks of {plan.block}s, alpha {plan.alpha} over {plan.steps} steps, "
          f"{n} rollouts per cell, seed {args.seed}\n")
    false_aborts(rng, plan, n)
    abort_times(rng, plan, k, horizon)
    pass_times(rng, plan, k, horizon)
    paired(rng, plan, n, k, horizon)
    print(f"\n({time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
