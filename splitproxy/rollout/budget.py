"""Alpha spending: how one rollout's false-abort budget is shared between the tests it runs.

The guard's promise is "a healthy canary is aborted with probability at most `alpha` over its
whole rollout". Every test that can abort spends part of that: each metric, each judged
version, each step (the tests restart at every step) and each replica that judges on its own.
A union bound adds the parts up, so the shares below sum to at most `alpha`.

Steps: the first `planned` test segments (one per pause step of the rollout) get equal
shares of `planned / (planned + 1)` of alpha; the remaining `1 / (planned + 1)` is spent on any
extra restarts (a threshold changed by a reload, a segment the engine did not plan, a pause
that lasts hours), the k-th extra one (from 0) getting `1 / ((k + 1)(k + 2))` of it: the
shares add up to the reserve, so no number of restarts can overspend, and the evidence a
restart needs grows only like `2 ln k` (halving the reserve each time would cost `k ln 2`: a
route judged for a day restarts 24 times). Equal shares beat the textbook
`alpha * 2^-(i+1)` when the number of steps is known: with 5 steps the last one gets alpha/6
instead of alpha/32, about 1.6 nats less evidence to collect.

Replicas: judge fleet-wide counts in one place (Prometheus counters, or the shared counters
judged by the one owner of the rollout) and pass `replicas=1`. If each of R replicas judges
its own traffic and may abort on its own, each must get alpha / R: pass `replicas=R`.

Beta (the false-pass rate) is not split between steps or metrics: a step advances only when
every metric passes, so a false pass of the whole step needs a false pass of the bad metric
(at most beta), and a bad canary is promoted only through a false pass at its last step. It is
split between replicas only if any one replica's pass may advance the rollout.
"""

from __future__ import annotations


def step_alpha(alpha: float, segment: int, planned: int, tests: int = 1,
               replicas: int = 1) -> float:
    """The false-abort level of one test in test segment `segment` (0-based, counting every
    restart in this rollout run), when the rollout plans `planned` segments, runs `tests`
    tests that can abort in each segment (metrics x judged versions) and `replicas` judges
    each abort on its own counts."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if segment < 0 or planned < 0 or tests < 1 or replicas < 1:
        raise ValueError("segment and planned must be >= 0, tests and replicas >= 1")
    share = 1.0 / (planned + 1)
    if segment >= planned:
        # Extra restarts: 1/(1*2) + 1/(2*3) + 1/(3*4) + ... of the reserve adds up to 1.
        k = segment - planned
        share /= (k + 1) * (k + 2)
    return alpha * share / (tests * replicas)


def total_alpha(alpha: float, planned: int, segments: int, tests: int = 1,
                replicas: int = 1) -> float:
    """What `segments` segments spend in all (for tests and for `/status`): at most alpha."""
    return sum(step_alpha(alpha, i, planned, tests, replicas) for i in range(segments)) \
        * tests * replicas
