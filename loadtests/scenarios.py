"""Load-test scenarios, end to end on one machine: `python -m loadtests.scenarios NAME`.

    python -m loadtests.scenarios steady-split            # one scenario, full length
    python -m loadtests.scenarios bad-canary --short      # the CI version (< 40 s)
    python -m loadtests.scenarios all                     # all nine, one after another
    python -m loadtests.scenarios --list

Each run starts fault-injectable upstreams (`loadtests.upstream`) and splitproxy as
subprocesses on free 127.0.0.1 ports, runs locust users in this process for a bounded time,
edits the proxy's config mid-run where the scenario says (write + rename, as an editor does),
polls the admin API's /status, and exits 0 only when every expectation holds. A JSON report
and a PNG plot go to loadtests/reports/<scenario>.{json,png}.

Shares are judged by a chi-square test at --alpha (default 0.001) over independent routing
decisions (see loadtests/analysis.py); the reports also give each version's 95% interval.
"""

from __future__ import annotations

import locust  # noqa: F401 -- first: gevent monkey-patches the standard library on import

# isort: split

import argparse
import http.client
import math
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]  # no stubs are installed
import gevent.event  # type: ignore[import-untyped]

from loadtests import analysis, locustfile, report, runner
from loadtests.analysis import ANON, COOKIE, PINNED, USER, Sample
from loadtests.harness import StatusLog
from loadtests.runner import Run, say
from loadtests.shadow_diff import shadow_diff

REPORTS = Path(__file__).resolve().parent / "reports"
STICKY = {"hash_header": "X-User-Id", "cookie": "splitproxy"}
GUARD_INTERVAL = 1.0
GUARD = {"interval": f"{GUARD_INTERVAL:g}s"}
SLOW_MS, P99_LIMIT_MS = 800, 400
# How long the guard takes to abort a canary failing every request, against a 1% limit, at
# the scenarios' traffic (>= 10 canary req/s, after up to 15 s of healthy traffic): p99 13 s
# in `python -m loadtests.guard_scenarios` (README: "How long a verdict takes"), plus the
# interval and 1 s for answers already in flight. The window guard of splitproxy 0.2 took
# interval * failure_limit + 1 = 3 s, with no bound at all on its false aborts.
REVERT_S = 13.0 + GUARD_INTERVAL + 1.0
FAULT_AT = 0.4  # share of the run before the fault: time for the abort and for the after
EPOCH_S = 0.5  # answers in flight when /status showed a switch: their color is either


def route(run: Run, versions: dict[str, list[str]], **fields: Any) -> dict[str, Any]:
    """A route named `run.route` whose versions point at the named upstream instances."""
    eps = {v: {"endpoints": [run.url(i) for i in names]} for v, names in versions.items()}
    return {"name": run.route, "versions": eps, **fields}


def finish(run: Run) -> None:
    run.at(run.duration)
    run.stop_load()


# --- 1. steady-split ----------------------------------------------------------------------------


def steady_split(run: Run) -> None:
    """90/10 for the whole run: shares match, users stick, nothing fails."""
    run.start_upstreams({"stable-1": "stable", "canary-1": "canary"})
    run.start_proxy([route(run, {"stable": ["stable-1"], "canary": ["canary-1"]},
                           weights={"stable": 90, "canary": 10}, sticky=STICKY)])
    run.start_load()
    finish(run)
    run.check_shares(cookie_sticky=True)
    run.check_sticky((USER, COOKIE))
    run.check_no_failures("0 errors")


# --- 2. weight-shift ----------------------------------------------------------------------------


def weight_shift(run: Run) -> None:
    """90/10 -> 70/30 -> 50/50 by config edits. Hash key only (no cookie), so identified users
    do move as the canary grows -- and must only ever move stable -> canary."""
    phases = [(90, 10), (70, 30), (50, 50)]
    run.start_upstreams({"stable-1": "stable", "canary-1": "canary"})

    def routes(s: int, c: int) -> list[dict[str, Any]]:
        return [route(run, {"stable": ["stable-1"], "canary": ["canary-1"]},
                      weights={"stable": s, "canary": c}, sticky={"hash_header": "X-User-Id"})]

    run.start_proxy(routes(*phases[0]))
    # Long sessions, so many identified users live through a weight change.
    run.start_load(mix={USER: 8, ANON: 2}, session_requests=80)
    for i, (s, c) in enumerate(phases[1:], start=1):
        run.at(run.duration * i / len(phases))
        run.edit(routes(s, c), f"weights {s}/{c}")
    finish(run)
    epochs = run.epochs()
    run.expect("every phase served", len(epochs) == len(phases),
               f"{len(epochs)} stretches of constant weights seen: "
               + "; ".join(e.label for e in epochs))
    run.check_shares(cookie_sticky=False)
    run.check_sticky((USER,))
    backward, forward = analysis.backward_moves(run.samples, ("stable", "canary"))
    run.facts["moves"] = {"stable_to_canary": forward, "canary_to_stable": backward[:20]}
    run.expect("hash users move one way", not backward,
               f"{len(backward)} users moved canary -> stable; {forward} moved stable -> canary "
               "as the canary grew")
    run.check_no_failures("0 errors")


# --- 3. bad-canary and 4. slow-canary: the guard -------------------------------------------------


def _guarded(run: Run, limits: dict[str, Any], fault: dict[str, Any], label: str) -> float:
    """Start a 90/10 route under analysis, break the canary half-way; returns the fault time."""
    run.start_upstreams({"stable-1": "stable", "canary-1": "canary"})
    run.start_proxy([route(run, {"stable": ["stable-1"], "canary": ["canary-1"]},
                           weights={"stable": 90, "canary": 10}, sticky=STICKY,
                           analysis={**GUARD, **limits})])
    # Testers who pin the canary: they must still reach it after an abort (and are left out).
    run.start_load(mix={USER: 7, COOKIE: 2, ANON: 1, PINNED: 1}, pin_version="canary")
    run.at(run.duration * FAULT_AT)
    assert run.upstreams is not None
    run.upstreams.control("canary-1", **fault)
    fault_t = run.mark(label, "fault")
    finish(run)
    return fault_t


def _check_revert(run: Run, fault_t: float, limit_s: float, slow_ms: float | None,
                  reason_has: str) -> None:
    assert run.status is not None
    first = run.status.first_aborted()
    last = run.status.last
    if first is None:
        run.expect("guard aborted the canary", False,
                   f"no abort in /status by the end (phase={last.get('phase')!r}, "
                   f"weights={last.get('weights')}); is the rollout guard running?")
        run.facts["revert"] = analysis.revert_timing(run.samples, "canary", None, slow_ms)
        return
    aborted_at = first.get("aborted_at")
    source = "the proxy's aborted_at"
    if not isinstance(aborted_at, int | float):
        aborted_at, source = first["t"], "the first /status poll that showed it"
    run.mark("abort", "abort", aborted_at)
    reason = str(first.get("abort_reason") or "")
    run.expect("guard aborted the canary", reason_has in reason.lower(),
               f"{aborted_at - fault_t:.2f}s after the fault ({source}); reason: {reason!r}")
    run.expect("no abort before the fault", aborted_at >= fault_t,
               f"aborted {aborted_at - fault_t:+.2f}s relative to the fault")
    timing = analysis.revert_timing(run.samples, "canary", aborted_at, slow_ms)
    run.facts["revert"] = timing
    ttr = timing["time_to_revert_s"]
    run.expect("time to revert", ttr is not None and ttr <= limit_s,
               f"{ttr:.2f}s from the first canary error a user saw to the last canary answer "
               f"(limit {limit_s:g}s); {timing['canary_errors_seen']} canary errors reached "
               f"{timing['users_who_saw_canary_errors']} users" if ttr is not None
               else "no canary error was seen at all")
    run.expect("0 canary responses after the abort", timing["canary_responses_after_abort"] == 0,
               f"{timing['canary_responses_after_abort']} unpinned requests sent after the "
               "abort were answered by the canary")
    final = last.get("weights", {})
    run.expect("all weight back on stable", final.get("canary") == 0 and final.get("stable", 0) > 0,
               f"effective weights at the end: {final}")
    pinned_after = [s for s in run.samples
                    if s.kind == PINNED and s.t > aborted_at and s.version == "canary"]
    run.facts["pinned_canary_after_abort"] = len(pinned_after)
    stable = analysis.errors_by_version(run.samples).get("stable", {})
    run.expect("stable unaffected", stable.get("errors", 1) == 0,
               f"{stable.get('errors')} errors in {stable.get('requests')} stable answers")
    run.facts["checks"] = last.get("checks", [])[-12:]


def bad_canary(run: Run) -> None:
    """The canary answers 500 from 40% of the run; the guard must abort within the simulated
    p99 time for it (13 s) + interval + 1 s, and no user may reach the canary after."""
    fault_t = _guarded(run, {"max_error_rate": 0.01}, {"error_rate": 1.0},
                       "canary returns 500s")
    _check_revert(run, fault_t, REVERT_S, None, "error rate")


def slow_canary(run: Run) -> None:
    """The canary's latency jumps to 800 ms at 40% of the run; the p99 limit (400 ms: at most 1%
    of requests slower) must abort it as fast as a failing one. The limit adds the 800 ms the
    last canary answer takes to arrive."""
    fault_t = _guarded(run, {"max_error_rate": 0.05, "max_p99_ms": P99_LIMIT_MS},
                       {"delay_ms": SLOW_MS}, f"canary slows to {SLOW_MS} ms")
    _check_revert(run, fault_t, REVERT_S + SLOW_MS / 1000, P99_LIMIT_MS, "p99")


# --- 5. blue-green-switch -----------------------------------------------------------------------


def blue_green_switch(run: Run) -> None:
    """`active: blue` -> `active: green` under load: nothing fails, and each color serves alone
    on its side of the switch. Testers send the preview header throughout."""
    run.start_upstreams({"blue-1": "blue", "green-1": "green"})

    def routes(active: str) -> list[dict[str, Any]]:
        return [route(run, {"blue": ["blue-1"], "green": ["green-1"]}, strategy="blue-green",
                      active=active, sticky=STICKY, preview_header="X-Splitproxy-Preview")]

    run.start_proxy(routes("blue"))
    run.start_load(mix={USER: 7, COOKIE: 2, ANON: 1, PINNED: 1},
                   pin_header="X-Splitproxy-Preview", pin_version="1")
    run.at(run.duration / 2)
    edit = run.edit(routes("green"), "active: green")
    finish(run)
    run.check_no_failures("0 failed requests across the switch")
    for epoch in run.epochs():
        active = [v for v, w in epoch.weights.items() if w > 0]
        seen: dict[str, int] = {}
        for s in analysis.routed(run.samples):
            if s.t in epoch:
                seen[s.version or ""] = seen.get(s.version or "", 0) + 1
        others = {v: n for v, n in seen.items() if v not in active}
        run.expect(f"only {'/'.join(active)} answered ({epoch.label})", not others,
                   f"{seen} between {epoch.start - run.t0:.1f}s and {epoch.end - run.t0:.1f}s")
    preview = {"before": {}, "after": {}}  # type: dict[str, dict[str, int]]
    for s in run.samples:
        if s.kind == PINNED and s.version:
            side = preview["before" if s.t < edit["time"] else "after"]
            side[s.version] = side.get(s.version, 0) + 1
    run.facts["preview"] = preview
    run.facts["switch_applied_ms"] = 1000 * (edit["applied"] - edit["time"])


# --- 5b. validated-switch ----------------------------------------------------------------------


def validated_switch(run: Run) -> None:
    """`active: blue` -> `active: green` with `pre_switch` under load: green fails its preview
    traffic, so the switch is held (no user reaches green, the reason in /status); green is
    fixed and announced by a new revision, validated again on its preview, and switched to.
    Testers send the preview header throughout."""
    run.start_upstreams({"blue-1": "blue", "green-1": "green"})
    assert run.upstreams is not None
    run.upstreams.control("green-1", error_rate=1.0)

    def routes(active: str, revision: str) -> list[dict[str, Any]]:
        return [route(run, {"blue": ["blue-1"], "green": ["green-1"]}, strategy="blue-green",
                      active=active, sticky=STICKY, preview_header="X-Splitproxy-Preview",
                      analysis={**GUARD, "max_error_rate": 0.05},
                      pre_switch={"duration": "2s", "analysis": True},
                      rollout={"revision": revision})]

    run.start_proxy(routes("blue", "1"))
    run.start_load(mix={USER: 6, COOKIE: 2, ANON: 1, PINNED: 3},
                   pin_header="X-Splitproxy-Preview", pin_version="1")
    run.at(run.duration * 0.1)
    held = run.edit(routes("green", "1"), "active: green (green failing)")
    # The guard's time to abort a version failing every request (REVERT_S), and some.
    run.at(max(run.duration * 0.6, run.duration * 0.1 + REVERT_S + 1.0))
    run.upstreams.control("green-1", error_rate=0.0)
    fixed = run.edit(routes("green", "2"), "green fixed: revision 2")
    finish(run)
    assert run.status is not None
    rows = run.status.rows
    while_held = [r for r in rows if held["applied"] <= r["t"] < fixed["time"]]
    first = next((r for r in while_held if r["aborted"]), None)
    reason = str(first["abort_reason"]) if first is not None else ""
    run.expect("the switch to a failing green is held", reason.startswith("pre-switch guard:"),
               (f"{first['t'] - held['time']:.1f}s after the edit; " if first else "")
               + f"reason in /status: {reason!r}")
    run.facts["held_after_s"] = None if first is None else first["t"] - held["time"]
    users = [s for s in run.samples if s.kind != PINNED]
    early = [s for s in users if held["time"] <= s.t < fixed["time"] and s.version == "green"]
    run.expect("no user reached green while it was validated and held", not early,
               f"{len(early)} unpinned requests answered by green before the fix")
    switched = next((r["t"] for r in rows if r["t"] > fixed["time"]
                     and r["weights"].get("green") == 100), None)
    run.expect("the fixed green is validated and switched to", switched is not None,
               f"{switched - fixed['time']:.1f}s after the fix (pre_switch duration 2s)"
               if switched is not None else f"last /status: {run.status.last}")
    late = [s for s in users if switched is not None and s.t > switched + EPOCH_S
            and s.version != "green"]
    run.expect("only green answers users after the switch", switched is not None and not late,
               f"{len(late)} unpinned requests after the switch answered by another color")
    bad = [s for s in users if not s.ok]
    run.expect("0 failed user requests", not bad,
               f"{len(bad)} of {len(users)} unpinned requests failed")
    run.facts["validation_s"] = None if switched is None else switched - fixed["time"]
    run.facts["preview_errors"] = sum(1 for s in run.samples if s.kind == PINNED and not s.ok)


# --- 6. rolling-endpoints -----------------------------------------------------------------------


def rolling_endpoints(run: Run) -> None:
    """Replace both stable endpoints one at a time: edit the config, let the proxy drain the old
    one for a second, then shut that instance down. Nothing may fail."""
    run.start_upstreams({f"stable-{i}": "stable" for i in range(1, 5)} | {"canary-1": "canary"})
    plan = [(["stable-3", "stable-2"], "stable-1"), (["stable-3", "stable-4"], "stable-2")]

    def routes(stable: list[str]) -> list[dict[str, Any]]:
        return [route(run, {"stable": stable, "canary": ["canary-1"]},
                      weights={"stable": 90, "canary": 10}, sticky=STICKY)]

    run.start_proxy(routes(["stable-1", "stable-2"]))
    run.start_load()
    removed: dict[str, float] = {}
    for i, (stable, old) in enumerate(plan, start=1):
        run.at(run.duration * i / (len(plan) + 1))
        edit = run.edit(routes(stable), f"stable: {old} -> {stable[0] if i == 1 else stable[1]}")
        removed[old] = edit["applied"]
        time.sleep(1.0)
        assert run.upstreams is not None
        run.upstreams.control(old, shutdown=True)
        run.mark(f"{old} shut down", "event")
    finish(run)
    run.check_no_failures("0 failed requests")
    by_instance: dict[str, int] = {}
    for s in run.samples:
        by_instance[s.instance or "-"] = by_instance.get(s.instance or "-", 0) + 1
    run.facts["by_instance"] = by_instance
    late = {old: sum(1 for s in run.samples if s.instance == old and s.t > t + 0.1)
            for old, t in removed.items()}
    run.expect("removed endpoints get no new requests", not any(late.values()),
               f"requests sent after the removal applied, per removed instance: {late}")
    fresh = {n: by_instance.get(n, 0) for n in ("stable-3", "stable-4")}
    run.expect("new endpoints take traffic", all(fresh.values()), f"answers: {fresh}")
    run.check_shares(cookie_sticky=True)
    run.check_sticky((USER, COOKIE))


# --- 7. healthy-canary ----------------------------------------------------------------------------

# Every canary at half of every limit: 2.5% errors against 5%, and 5% of answers 300 ms late
# against "at most 10% slower than 250 ms" (max_p90_ms).
HEALTHY_LIMITS = {"max_error_rate": 0.05, "max_p90_ms": 250}
HEALTHY_FAULTS = {"error_rate": 0.025, "slow_rate": 0.05, "slow_ms": 300}
# Canary requests a pass of both limits at one check needs at half of each, p95
# (`python -m loadtests.guard_scenarios`; README: "How long a verdict takes"): 1257.
PASS_NEEDS = 1300
HEALTHY_RATES = {"quiet": 2.0, "light": 10.0, "busy": 100.0}  # canary requests a second
HEALTHY_PAUSE = "5s"


def _paced(run: Run, path: str, rate: float, stop: gevent.event.Event) -> None:
    """One client of `path` sending `rate` requests a second on a keep-alive connection,
    recorded as anonymous samples (it lags, and does not catch up, when answers are slow)."""
    assert run.proxy is not None
    host, port = run.proxy.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    gap = 1.0 / rate
    due = time.time()
    while not stop.is_set():
        sent = time.time()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            status, version = resp.status, resp.getheader("X-Served-By")
            instance = resp.getheader("X-Upstream-Instance")
        except (OSError, http.client.HTTPException):
            conn.close()
            status, version, instance = 0, None, None
        locustfile.RECORDER.add(Sample(sent, 1000 * (time.time() - sent), status, version,
                                       path.strip("/"), ANON, instance))
        due = max(due + gap, time.time())
        gevent.sleep(max(0.0, due - time.time()))
    conn.close()


def healthy_canary(run: Run) -> None:
    """Canaries at half of every limit (errors, latency) at 2, 10 and 100 canary req/s, each in
    a rollout that waits for evidence: none is aborted; each is still progressing or promoted;
    one whose traffic gives the evidence a pass needs completes its rollout on evidence."""
    instances: dict[str, str] = {}
    for name in HEALTHY_RATES:
        instances |= {f"{name}-stable": "stable", f"{name}-canary": "canary"}
    run.start_upstreams(instances)
    assert run.upstreams is not None
    for name in HEALTHY_RATES:
        run.upstreams.control(f"{name}-canary", **HEALTHY_FAULTS)
    run.route = "busy"  # the status log and the plot's weights follow this one
    run.start_proxy([
        {"name": name, "match": {"path_prefix": f"/{name}"},
         "versions": {v: {"endpoints": [run.url(f"{name}-{v}")]} for v in ("stable", "canary")},
         "weights": {"stable": 100, "canary": 0}, "analysis": {**GUARD, **HEALTHY_LIMITS},
         "rollout": {"steps": [{"set_weight": 50}, {"pause": HEALTHY_PAUSE}]}}
        for name in HEALTHY_RATES])
    assert run.proxy is not None
    logs = {name: StatusLog(run.proxy, name, interval=0.5) for name in HEALTHY_RATES}
    run._greenlets += [gevent.spawn(log.run) for log in logs.values()]
    stop = gevent.event.Event()
    clients = []
    for name, rate in HEALTHY_RATES.items():
        total = 2 * rate  # the canary has half of the route's requests
        n = max(1, math.ceil(total / 20))
        clients += [gevent.spawn(_paced, run, f"/{name}", total / n, stop) for _ in range(n)]
    run.t0 = time.time()
    run.mark("load started", "load")
    run.at(run.duration)
    stop.set()
    gevent.joinall(clients, timeout=15)
    run.t_end = time.time()
    for log in logs.values():
        log.running = False
    report: dict[str, Any] = {}
    for name, log in logs.items():
        last = log.poll() or log.last
        canary = sum(1 for s in run.samples if s.user == name and s.version == "canary"
                     and s.status)
        aborted = log.first_aborted()
        passes = [c for c in last.get("checks", []) if c.get("result") == "pass"]
        guard = last.get("guard") or {}
        promoted = next((r["t"] - run.t0 for r in log.rows if r.get("phase") == "promoted"),
                        None)
        report[name] = {"phase": last.get("phase"), "pause_reason": last.get("pause_reason"),
                        "canary_answers": canary, "promoted_after_s": promoted,
                        "guard": guard.get("summary")}
        run.expect(f"{name}: no abort", aborted is None and last.get("phase") in
                   ("progressing", "paused", "promoted"),
                   f"phase {last.get('phase')} ({last.get('pause_reason') or '-'}) after "
                   f"{canary} canary answers; {guard.get('summary') or 'no verdict yet'}"
                   + (f"; aborted: {aborted.get('abort_reason')}" if aborted else ""))
        if canary >= PASS_NEEDS:
            run.expect(f"{name}: completed on evidence",
                       last.get("phase") == "promoted" and bool(passes),
                       f"{canary} canary answers >= {PASS_NEEDS} a pass needs (p95): phase "
                       f"{last.get('phase')}"
                       + (f" {promoted:.1f}s after the load started" if promoted else "")
                       + f", {len(passes)} passing checks in the history")
    run.facts["routes"] = report
    # The canaries' 500s are injected (half the limit); nothing else may fail.
    bad = [s for s in run.samples if s.status == 0 or (s.error and s.version != "canary")]
    run.expect("every request answered", not bad,
               f"{len(bad)} of {len(run.samples)} requests failed other than by the canary's "
               f"injected 500s ({sum(1 for s in run.samples if s.error)} 500s in all)")


# --- running ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    fn: Callable[[Run], None]
    full_s: float
    short_s: float | None  # None: no CI version

    @property
    def summary(self) -> str:
        doc = (self.fn.__doc__ or "").strip()
        return " ".join(doc.split())


SCENARIOS = {s.name: s for s in (
    Scenario("steady-split", steady_split, 30, 12),
    Scenario("weight-shift", weight_shift, 45, 24),
    Scenario("bad-canary", bad_canary, 30, 24),
    Scenario("slow-canary", slow_canary, 30, 24),
    Scenario("blue-green-switch", blue_green_switch, 30, 14),
    Scenario("validated-switch", validated_switch, 40, 30),
    Scenario("rolling-endpoints", rolling_endpoints, 30, 18),
    Scenario("healthy-canary", healthy_canary, 60, 30),
    Scenario("shadow-diff", shadow_diff, 30, None),  # loadtests/shadow_diff.py
)}


def run_one(scenario: Scenario, args: argparse.Namespace) -> bool:
    duration = args.duration or (scenario.short_s if args.short and scenario.short_s
                                 else scenario.full_s)
    run = Run(scenario.name, duration, args.short, args.users, args.alpha, args.report_dir)
    say(f"== {scenario.name}: {duration:g}s, {args.users} users"
        f"{' (short)' if args.short else ''}")
    try:
        with run:
            scenario.fn(run)
    except Exception as exc:  # a broken run is a failed run, with its report
        run.expect("run completed", False, f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        if run.children is not None:
            for name in ("splitproxy", "upstreams"):
                tail = run.children.log_tail(name, 15)
                if tail:
                    say(f"--- {name} log (last lines) ---\n{tail}")
    write_report(run)
    say(f"== {scenario.name}: {'PASS' if run.passed else 'FAIL'}")
    for e in run.expects:
        say(e.line())
    if run.passed:
        shutil.rmtree(run.workdir, ignore_errors=True)
    else:
        say(f"   config and process logs kept in {run.workdir}")
    return run.passed


def write_report(run: Run) -> None:
    run.report_dir.mkdir(parents=True, exist_ok=True)
    t0 = run.t0 or time.time()
    t1 = run.t_end or time.time()
    steps = run.status.weight_steps() if run.status else []
    edits = run.proxy.edits if run.proxy else []
    data = {
        "scenario": run.name,
        "passed": run.passed,
        "short": run.short,
        "duration_s": run.duration,
        "users": run.users,
        "alpha": run.alpha,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)),
        "expectations": [{"name": e.name, "ok": e.ok, "detail": e.detail} for e in run.expects],
        "summary": run.summary() if run.samples else {},
        "facts": _relative(run.facts, t0),
        "events": [{**e, "t": round(e["t"] - t0, 3)} for e in run.events],
        "edits": [{k: round(v - t0, 3) if k in ("time", "applied") else v for k, v in e.items()}
                  for e in edits],
        "weights": [{"t": round(t - t0, 3), "weights": w} for t, w in steps],
    }
    json_path = run.report_dir / f"{run.name}.json"
    report.write_json(json_path, data)
    png = run.report_dir / f"{run.name}.png"
    if run.samples:
        title = f"{run.name}: {'PASS' if run.passed else 'FAIL'} ({len(run.samples)} requests)"
        report.plot(png, title, run.samples, t0, t1, steps, run.events)
    say(f"   report: {json_path}" + (f", {png}" if run.samples else ""))


def _relative(facts: dict[str, Any], t0: float) -> dict[str, Any]:
    """Wall-clock times in the facts as seconds since the load started."""
    out = dict(facts)
    if isinstance(out.get("revert"), dict):
        out["revert"] = {k: (round(v - t0, 3) if k in ("first_canary_error",
                                                       "last_canary_response", "abort_time")
                             and isinstance(v, float) else v)
                         for k, v in out["revert"].items()}
    return out


def _on_sigterm(signum: int, frame: object) -> None:
    runner.STOP_REQUESTED = 128 + signum  # Run.at() raises SystemExit; Run.__exit__ cleans up


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.scenarios",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("name", nargs="?", help=f"one of {', '.join(SCENARIOS)}, or all")
    p.add_argument("--short", action="store_true", help="the CI length (not every scenario)")
    p.add_argument("--duration", type=float, help="seconds of load (default: per scenario)")
    p.add_argument("--users", type=int, default=50, help="locust users (50)")
    p.add_argument("--alpha", type=float, default=0.001,
                   help="significance level of the share tests (0.001; 0.05 = the 95%% level)")
    p.add_argument("--report-dir", type=Path, default=REPORTS, help=f"(default {REPORTS})")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = p.parse_args(argv)
    if args.list or not args.name:
        for s in SCENARIOS.values():
            short = f", --short {s.short_s:g}s" if s.short_s else ""
            sys.stdout.write(f"{s.name:<18} {s.full_s:g}s{short}: {s.summary}\n")
        return 0 if args.list else 2
    if args.name != "all" and args.name not in SCENARIOS:
        p.error(f"unknown scenario {args.name!r}; one of {', '.join(SCENARIOS)}, or all")
    if args.duration is not None and args.duration < 6:
        p.error("--duration must be at least 6 seconds")
    signal.signal(signal.SIGTERM, _on_sigterm)
    chosen = list(SCENARIOS.values()) if args.name == "all" else [SCENARIOS[args.name]]
    results = {s.name: run_one(s, args) for s in chosen}
    if len(results) > 1:
        say("== summary: " + ", ".join(f"{n} {'PASS' if ok else 'FAIL'}"
                                       for n, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
