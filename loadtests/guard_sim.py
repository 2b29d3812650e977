"""The guard's error rates, measured: `python -m loadtests.guard_sim [--rollouts N] [--seed S]`.

Thousands of seeded rollouts with per-tick (1 s) binomial draws, judged every tick exactly as
`splitproxy.rollout.sequential` judges (the vectorised twins in `guard_model` are checked against it
in the tests). A rollout has `steps` steps; each restarts the tests with its share of alpha
(`budget.step_alpha`) and ends when its timer is up *and* the pass side holds at that check;
a step still waiting after `hold_seconds` moves on anyway, so that every rollout runs all its
steps (the real engine would keep waiting, with the fail side still judging: Ville's bound
covers however long it waits).

Prints: false aborts of healthy canaries (burst-robust guard, and in brackets the plain
binomial test without the burst guard), times to abort bad canaries, times to pass, for the
error rate, a p99 latency limit, and the comparison against the baseline. The default 1000
rollouts per cell (about 90,000 rollouts in all) take about 3 minutes on two shared cores;
`--rollouts 100` gives a rougher table in about 20 s.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from loadtests import guard_model as gm
from splitproxy.rollout.budget import step_alpha

RATES = (1.0, 10.0, 100.0)  # canary requests per second


@dataclass(frozen=True)
class Plan:
    """How the engine runs a rollout, and the guard's settings."""

    threshold: float = 0.01
    steps: int = 5
    step_seconds: int = 600
    hold_seconds: int = 1200
    alpha: float = 0.01
    beta: float = 0.05
    tests: int = 1  # tests that can abort per step (metrics x versions)
    slice_requests: int = 30
    slice_seconds: float = 3.0
    ratio_slice_requests: int = 60
    ratio_slice_seconds: float = 6.0
    margin: float = 0.5  # comparison: canary rate <= 1.5 x baseline rate
    baseline_factor: float = 9.0  # baseline traffic per canary request (a 10% canary)
    baseline_rate: float = 0.01  # the baseline's own error rate in comparisons

    def alpha_at(self, step: int) -> float:
        return step_alpha(self.alpha, step, self.steps, self.tests)


@dataclass
class _Cell:
    """One table cell followed through whole rollouts."""

    level: float
    process: str
    robust: bool
    aborted: gm.Bools
    alive: gm.Bools
    passed: gm.Bools  # every step so far ended on a pass


def rollout_cells(rng: np.random.Generator, plan: Plan, rate: float,
                  cells: Sequence[tuple[float, str, bool]], count: int,
                  ratio: bool = False) -> list[tuple[float, float]]:
    """Whole rollouts for each (level, process, robust) cell at one traffic rate, all on the
    same traffic: per cell (share aborted, share promoted on evidence at every step).
    `level` is in units of the threshold (or of the allowed ratio, for comparisons)."""
    state = [_Cell(lv, pr, rb, np.zeros(count, dtype=bool), np.ones(count, dtype=bool),
                   np.ones(count, dtype=bool)) for lv, pr, rb in cells]
    for step in range(plan.steps):
        alpha = plan.alpha_at(step)
        n = gm.requests(rng, count, plan.hold_seconds, rate)
        nb = gm.requests(rng, count, plan.hold_seconds, rate * plan.baseline_factor) \
            if ratio else None
        cuts = _cuts(plan, n, nb)
        for cell in state:
            if not cell.alive.any():
                continue
            fail, held = _verdicts(rng, plan, n, nb, cuts, cell.level, cell.process,
                                   cell.robust, alpha)
            late = held[:, plan.step_seconds - 1:]
            end = np.where(late.any(axis=1), plan.step_seconds - 1 + late.argmax(axis=1),
                           plan.hold_seconds)
            stopped = cell.alive & (fail <= np.minimum(end, plan.hold_seconds - 1))
            cell.aborted |= stopped
            cell.alive &= ~stopped
            # A step still waiting at `hold_seconds` moves on anyway (as if promoted by
            # hand), so that every rollout goes through all its steps: the worst case.
            cell.passed &= ~stopped & (end < plan.hold_seconds)
    return [(float(c.aborted.mean()), float(c.passed.mean())) for c in state]


def _cuts(plan: Plan, n: gm.Ints, nb: gm.Ints | None) -> gm.Slices:
    if nb is None:
        return gm.slices(n, plan.slice_requests, plan.slice_seconds)
    return gm.slices(n, plan.ratio_slice_requests, plan.ratio_slice_seconds, nb)


def _verdicts(rng: np.random.Generator, plan: Plan, n: gm.Ints, nb: gm.Ints | None,
              cuts: gm.Slices, level: float, process: str, robust: bool,
              alpha: float) -> tuple[gm.Ints, gm.Bools]:
    """The first fail tick and where the pass side holds, for one block of traffic."""
    if nb is not None:
        base = plan.baseline_rate
        s = gm.events(rng, n, level * (1.0 + plan.margin) * base, process)
        sb = gm.events(rng, nb, base, process)
        return gm.ratio_verdicts(s, sb, n, nb, cuts, plan.margin, alpha, plan.beta)
    s = gm.events(rng, n, level * plan.threshold, process)
    if robust:
        fail = gm.bet_fail_ticks(s, n, cuts, plan.threshold, alpha)
    else:
        fail = gm.binomial_fail_ticks(s, n, plan.threshold, alpha)
    return fail, gm.pass_held(s, n, plan.threshold, plan.beta)


def first_times(rng: np.random.Generator, plan: Plan, rate: float,
                cells: Sequence[tuple[float, str]], count: int, horizon: int, want: str,
                ratio: bool = False) -> list[gm.Floats]:
    """Per (level, process) cell, seconds from a step's start to its first fail
    (`want="fail"`) or pass, inf if none within `horizon`, all on the same traffic. Every
    planned step has the same alpha share, so the first step stands for all."""
    n = gm.requests(rng, count, horizon, rate)
    nb = gm.requests(rng, count, horizon, rate * plan.baseline_factor) if ratio else None
    cuts = _cuts(plan, n, nb)
    out = []
    for level, process in cells:
        fail, held = _verdicts(rng, plan, n, nb, cuts, level, process, True, plan.alpha_at(0))
        ticks = fail if want == "fail" else gm.first(held)
        out.append(np.where(ticks < horizon, ticks + 1.0, np.inf))
    return out


def _quantiles(times: gm.Floats) -> str:
    ordered = np.sort(times)

    def at(q: float) -> str:
        x = float(ordered[max(0, math.ceil(q * ordered.size) - 1)])
        if not math.isfinite(x):
            return "never"
        return f"{x:.0f}s" if x < 600 else f"{x / 60:.0f}m"
    return f"{at(0.5)}/{at(0.95)}"


def _row(label: str, cells: Sequence[str], width: int = 15) -> str:
    return f"{label:<24}" + "".join(f"{c:>{width}}" for c in cells)


def abort_table(rng: np.random.Generator, plan: Plan, processes: Sequence[str],
                levels: Sequence[float], count: int, ratio: bool = False,
                plain: Sequence[str] = (), show_promoted: bool = False) -> list[str]:
    """Share of whole rollouts aborted (and promoted) per process, rate and level."""
    unit = "x" if not ratio else "x ratio"
    lines = [_row("process, canary req/s", [f"{lv:g}{unit}" for lv in levels])]
    for rate in RATES:
        cells = [(lv, pr, True) for pr in processes for lv in levels]
        cells += [(lv, pr, False) for pr in plain for lv in levels if lv in PLAIN_LEVELS]
        results = dict(zip(cells, rollout_cells(rng, plan, rate, cells, count, ratio),
                           strict=True))
        for process in processes:
            row = []
            for level in levels:
                aborted, promoted = results[(level, process, True)]
                cell = f"{aborted:.1%}" + (f"/{promoted:.0%}" if show_promoted else "")
                if (level, process, False) in results:
                    cell += f" ({results[(level, process, False)][0]:.0%})"
                row.append(cell)
            lines.append(_row(f"{process}, {rate:g}", row))
    return lines


HORIZONS = {1.0: 4 * 3600, 10.0: 3600, 100.0: 1200}
PLAIN_LEVELS = (0.5, 1.0)  # where the table also runs the test without the burst guard


def time_table(rng: np.random.Generator, plan: Plan, processes: Sequence[str],
               levels: Sequence[float], count: int, want: str,
               ratio: bool = False) -> list[str]:
    lines = [_row("process, canary req/s", [f"{lv:g}x" for lv in levels])]
    for rate in RATES:
        cells = [(lv, pr) for pr in processes for lv in levels]
        times = dict(zip(cells, first_times(rng, plan, rate, cells, count, HORIZONS[rate],
                                            want, ratio), strict=True))
        for process in processes:
            lines.append(_row(f"{process}, {rate:g}",
                              [_quantiles(times[(lv, process)]) for lv in levels]))
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20240611)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    count, plan = args.rollouts, Plan()
    half = max(count // 2, 1)
    started = time.perf_counter()
    print(f"alpha {plan.alpha} over {plan.steps} steps of >= {plan.step_seconds // 60} min "
          f"(each test at alpha/{1 / plan.alpha_at(0) * plan.alpha:.0f}), beta {plan.beta}, "
          f"slices of {plan.slice_requests} requests, checks every 1 s, {count} rollouts")
    bursty = ["runs of 5", "runs of 10", "blips 0.3 s", "blips 1 s", "pod 30 s"]
    p90 = replace(plan, threshold=0.1)
    sections: list[tuple[str, list[str]]] = [
        ("False aborts of healthy canaries over a whole rollout, error rate limit 1% "
         "(in brackets: the plain binomial test, without the burst guard)",
         abort_table(rng, plan, ["independent", *bursty], (0.1, 0.5, 0.9, 1.0), count,
                     plain=bursty)),
        ("Bad canaries over a whole rollout: aborted/promoted",
         abort_table(rng, plan, ["independent", "runs of 10"], (1.25, 1.5, 2.0, 3.0), count,
                     show_promoted=True)),
        ("Time to abort (median/p95), error rate limit 1% (a p99 latency limit is the same "
         "test: 1% of requests over the limit)",
         time_table(rng, plan, ["independent", "runs of 10"], (2, 5, 10, 20), half, "fail")),
        ("Time to pass (median/p95), error rate limit 1% (or a p99 limit)",
         time_table(rng, plan, ["independent"], (0.0, 0.1, 0.5), half, "pass")),
        ("p90 latency limit (10% of requests over the limit): false aborts, slow requests "
         "independent or in 0.3 s GC pauses",
         abort_table(rng, p90, ["independent", "blips 0.3 s"], (0.5, 0.9, 1.0), count)),
        ("p90 latency limit: time to abort (median/p95)",
         time_table(rng, p90, ["independent"], (2, 5), half, "fail")),
        ("p90 latency limit: time to pass (median/p95)",
         time_table(rng, p90, ["independent"], (0.5,), half, "pass")),
        ("Against the baseline (1% errors, 9x the canary's traffic), margin 0.5: "
         "false aborts",
         abort_table(rng, plan, ["independent", "runs of 10", "blips 0.3 s"],
                     (0.1, 0.5, 0.9, 1.0), count, ratio=True)),
        ("Against the baseline: time to abort (median/p95), x the allowed ratio",
         time_table(rng, plan, ["independent"], (2, 5, 10, 20), half, "fail", ratio=True)),
        ("Against the baseline: time to pass (median/p95)",
         time_table(rng, plan, ["independent"], (0.1, 0.5), half, "pass", ratio=True)),
    ]
    for title, lines in sections:
        print(f"\n{title}")
        print("\n".join(lines))
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
