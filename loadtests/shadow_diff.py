"""The shadow-diff load scenario (`python -m loadtests.scenarios shadow-diff`): a route whose
canary, at weight 0, gets copies of half the requests (`mirror`) and answers a known share of
them differently (a 500 where the primary answers 200, on a seeded 20% of its requests).

It passes when, under locust load:
- the proxy's mismatch count, over the copies it compared, is the canary's injected share
  within a binomial tolerance: |observed - 20%| <= z(1 - alpha/2) * sqrt(0.2 * 0.8 / n), the
  same --alpha as the share tests (z = 3.29 at 0.001);
- no mismatch without a cause: mismatches <= the 500s the canary says it answered;
- every request was copied exactly as `percent` says: copies (every result) = floor(n / 2) of
  the n requests the primary answered (the spread is deterministic, not a coin toss);
- no client ever saw the canary: every answer is the primary's, and none failed;
- when the canary then hangs (2 s, over the mirror's 0.5 s timeout) the copies are dropped
  and counted, and the clients do not wait for them: their p90 stays under the mirror's
  timeout (a proxy that waited for the copy would hold every copied request, half of them,
  for at least that long).
"""

from __future__ import annotations

import math
import statistics
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from loadtests.runner import Run

PERCENT = 50  # share of the requests copied to the canary
DIFF_RATE = 0.2  # share of the canary's answers that differ (500 instead of 200)
TIMEOUT_S = 0.5  # the mirror's timeout
HANG_MS = 2000  # the canary's delay in the second part: well over the timeout
HANG_AT = 0.6  # share of the run before the canary hangs
SETTLE_S = 10.0  # after the load: time for the last copies to be counted


def shadow_counts(run: Run) -> dict[str, int]:
    """The proxy's `splitproxy_shadow_requests_total` for the route, by result."""
    assert run.proxy is not None
    with urllib.request.urlopen(f"{run.proxy.admin_url}/metrics", timeout=5.0) as resp:
        text = resp.read().decode()
    out: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "splitproxy_shadow_requests":
            continue
        for s in family.samples:
            if s.name.endswith("_total") and s.labels.get("route") == run.route:
                out[s.labels["result"]] = int(s.value)
    return out


def _p90(latencies: list[float]) -> float | None:
    if len(latencies) < 10:
        return None
    return statistics.quantiles(latencies, n=10)[-1]


def shadow_diff(run: Run) -> None:
    """The canary at weight 0 gets copies of half the requests and answers 20% of them with a
    500: the proxy's mismatch share is 20% within a binomial tolerance, every request is
    copied as `percent` says, no client sees the canary; then the canary hangs and its copies
    are dropped without slowing the clients."""
    run.start_upstreams({"stable-1": "stable", "canary-1": "canary"})
    assert run.upstreams is not None
    run.upstreams.control("canary-1", error_rate=DIFF_RATE)
    versions = {"stable": {"endpoints": [run.url("stable-1")]},
                "canary": {"endpoints": [run.url("canary-1")]}}
    run.start_proxy([{"name": run.route, "versions": versions,
                      "weights": {"stable": 100, "canary": 0},
                      "mirror": {"to": "canary", "percent": PERCENT,
                                 "timeout": f"{TIMEOUT_S:g}s", "max_in_flight": 512}}])
    run.start_load()
    run.at(run.duration * HANG_AT)
    compared = shadow_counts(run)  # the healthy part's comparisons
    run.upstreams.control("canary-1", delay_ms=HANG_MS)
    hang_t = run.mark(f"canary hangs {HANG_MS} ms (mirror timeout {TIMEOUT_S:g} s)", "fault")
    run.at(run.duration)
    run.stop_load()

    # Every copy counted once: wait for the last ones (a positive signal, with a deadline).
    answered = int(run.upstreams.status("stable-1")["requests"])
    want = answered * PERCENT // 100
    deadline = time.monotonic() + SETTLE_S
    while sum((counts := shadow_counts(run)).values()) < want and time.monotonic() < deadline:
        time.sleep(0.2)
    canary = run.upstreams.status("canary-1")  # read after the counts: it answered them first
    run.facts["shadow"] = {"counts": counts, "healthy_part": compared, "primary_answered":
                           answered, "canary": {k: canary[k] for k in ("requests", "errors")}}

    _check_share(run, compared)
    mismatches = counts.get("mismatch", 0)
    run.expect("no mismatch without a cause", mismatches <= int(canary["errors"]),
               f"{mismatches} mismatches counted, {canary['errors']} 500s the canary answered "
               f"({counts.get('dropped', 0)} copies dropped, so not compared)")
    total = sum(counts.values())
    run.expect(f"{PERCENT}% of the requests copied", total == want,
               f"{total} copies counted ({counts}) for {answered} requests the primary "
               f"answered: want exactly {want}")
    _check_clients(run, hang_t, counts.get("dropped", 0) - compared.get("dropped", 0))


def _check_share(run: Run, compared: dict[str, int]) -> None:
    n = compared.get("match", 0) + compared.get("mismatch", 0)
    if n < 100:
        run.expect("mismatch share", False, f"only {n} copies compared (< 100): too little load")
        return
    share = compared.get("mismatch", 0) / n
    z = statistics.NormalDist().inv_cdf(1 - run.alpha / 2)
    tolerance = z * math.sqrt(DIFF_RATE * (1 - DIFF_RATE) / n)
    run.facts["mismatch_share"] = {"n": n, "share": share, "tolerance": tolerance}
    run.expect("mismatch share", abs(share - DIFF_RATE) <= tolerance,
               f"{100 * share:.2f}% of {n} compared copies mismatched; the canary differs on "
               f"{100 * DIFF_RATE:g}% (tolerance +-{100 * tolerance:.2f} points at "
               f"alpha={run.alpha:g})")


def _check_clients(run: Run, hang_t: float, dropped: int) -> None:
    samples = run.samples
    canary = [s for s in samples if s.version != "stable"]
    failed = [s for s in samples if not s.ok]
    run.expect("no client saw the canary", not canary and not failed,
               f"{len(samples)} answers: {len(canary)} not the primary's, {len(failed)} failed")
    before = [s.latency_ms for s in samples if s.t < hang_t]
    hanging = [s.latency_ms for s in samples if s.t >= hang_t + TIMEOUT_S]
    p90 = {"healthy": _p90(before), "canary_hanging": _p90(hanging)}
    run.facts["client_p90_ms"] = p90
    slow = p90["canary_hanging"]
    run.expect("a hanging canary costs clients nothing", dropped > 0 and slow is not None
               and slow < 1000 * TIMEOUT_S,
               f"{dropped} copies dropped while it hung; client p90 {_ms(p90['healthy'])} "
               f"before, {_ms(slow)} while it hung (a proxy waiting for the copies would "
               f"hold half the requests >= {1000 * TIMEOUT_S:g} ms)")


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"

