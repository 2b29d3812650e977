"""The numbers behind the load scenarios' expectations: `python -m loadtests.guard_scenarios`.

Seeded runs of the engine's own tests (`splitproxy.rollout.sequential`, one observation a second, as
the engine checks with `interval: 1s`), in the scenarios' situations rather than at a step's
start as `guard_sim` measures:

* `bad-canary` / `slow-canary`: after a healthy stretch (the fail side's evidence shrinks while
  the canary is good, so a fault found later takes longer), the canary fails every request
  (or every request is over the latency limit): seconds from the fault to the abort.
* `healthy-canary`: canaries at half of each limit: canary requests until the pass holds at a
  check, per limit and for both limits at once (what a step that waits for evidence needs).

About 10 s on two shared cores.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import numpy as np

from splitproxy.rollout.budget import step_alpha
from splitproxy.rollout.sequential import RateLimit, RateState, judge, observe
from splitproxy.rollout.verdicts import Outcome

ALPHA, BETA = 0.01, 0.05


def abort_after(rng: np.random.Generator, threshold: float, rate: float, healthy_s: int,
                tests: int, runs: int) -> np.ndarray:
    """Seconds from the fault to the abort, the canary failing every request after
    `healthy_s` seconds of none (an idle route: one planned segment)."""
    limit = RateLimit(threshold, step_alpha(ALPHA, 0, 1, tests), BETA)
    out = np.full(runs, np.inf)
    for r in range(runs):
        state = RateState(since=0.0)
        for t in range(1, healthy_s + 120):
            n = int(rng.poisson(rate))
            state = observe(limit, state, n if t > healthy_s else 0, n, float(t))
            if judge(limit, state).outcome is Outcome.FAIL:
                out[r] = t - healthy_s
                break
    return out


def pass_after(rng: np.random.Generator, thresholds: Sequence[float], level: float,
               rate: float, runs: int, horizon: int = 600) -> np.ndarray:
    """Canary requests until every limit passes at one check, each at `level` x its limit."""
    alpha = step_alpha(ALPHA, 0, 1, len(thresholds))
    limits = [RateLimit(q, alpha, BETA) for q in thresholds]
    out = np.full(runs, np.inf)
    for r in range(runs):
        states = [RateState(since=0.0) for _ in limits]
        seen = 0
        for t in range(1, horizon):
            n = int(rng.poisson(rate))
            seen += n
            states = [observe(lim, st, int(rng.binomial(n, lim.threshold * level)), n, float(t))
                      for lim, st in zip(limits, states, strict=True)]
            if all(judge(lim, st).outcome is Outcome.PASS
                   for lim, st in zip(limits, states, strict=True)):
                out[r] = seen
                break
    return out


def _q(values: np.ndarray, q: float) -> str:
    x = float(np.quantile(values, q))
    return "never" if not math.isfinite(x) else f"{x:.0f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=20240612)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print("Abort after a healthy stretch: seconds from the fault (median/p95/p99/max), the "
          "canary failing every request")
    for threshold, tests in ((0.01, 1), (0.01, 2), (0.05, 1)):
        for rate in (10.0, 33.0, 100.0):
            for healthy in (8, 15):
                t = abort_after(rng, threshold, rate, healthy, tests, args.runs)
                print(f"  limit {threshold:.0%}, {tests} test(s), {rate:g} req/s, {healthy} s "
                      f"healthy: {_q(t, 0.5)}/{_q(t, 0.95)}/{_q(t, 0.99)}/{_q(t, 1.0)} s")
    print("\nCanary requests until the pass holds at a check, canary at half of each limit "
          "(median/p95)")
    for thresholds in ((0.05,), (0.1,), (0.05, 0.1), (0.01,)):
        for rate in (10.0, 100.0):
            n = pass_after(rng, thresholds, 0.5, rate, args.runs)
            label = " and ".join(f"{q:.0%}" for q in thresholds)
            print(f"  limit {label}, {rate:g} req/s: {_q(n, 0.5)}/{_q(n, 0.95)} requests")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
