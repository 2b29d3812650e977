"""The PromQL an operator reads, run against a real Prometheus scraping a real proxy: the
README's and the dashboard's error rate show 0 for a version without errors (not an empty
result), the dashboard's phase panel shows an abort as `aborted`, and its abort annotation
gives one Grafana annotation per abort, at the abort's time."""

from __future__ import annotations

import functools
import math
import re
import time
from pathlib import Path
from typing import Any

from tests.support.dashboard import dashboard, fill, panel_expr
from tests.support.load import Load, plain
from tests.support.processes import PrometheusServer
from tests.support.replicas import Replica, replica_config, run_replicas
from tests.support.upstream import run_upstreams
from tests.support.waiting import wait_until

ROOT = Path(__file__).parents[2]
def readme_query(comment: str) -> str:
    """The query under `# <comment>...` in the README's Metrics PromQL block."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Metrics\n"):text.index("#### Access log\n")]
    block = re.search(r"```promql\n(.*?)```", section, re.S)
    assert block is not None, "no promql block under ### Metrics"
    for entry in block[1].split("\n\n"):
        lines = entry.strip().splitlines()
        if lines[0].startswith(f"# {comment}"):
            return "\n".join(ln for ln in lines if not ln.startswith("#"))
    raise AssertionError(f"no query under '# {comment}' in the README")


def by_version(result: list[dict[str, Any]]) -> dict[str, float]:
    return {s["metric"]["version"]: float(s["value"][1]) for s in result}


async def test_a_version_without_errors_shows_an_error_rate_of_0_not_no_data(
    tmp_path: Path, prometheus: PrometheusServer,
) -> None:
    readme = readme_query("per-version error rate")
    grafana = panel_expr("Error rate (5xx ratio)")
    without_or = ('sum by (route, version) (rate(splitproxy_requests_total{code=~"5.."}[1m]))'
                  " / sum by (route, version) (rate(splitproxy_requests_total[1m]))")
    async with run_upstreams("stable", "canary") as ups:
        ups["canary"].fail_all = True  # every canary answer is a 500; stable never fails
        async with run_replicas(tmp_path, [replica_config(ups, redis=None)]) as [r]:
            await prometheus.start([f"127.0.0.1:{r.admin_port}"])
            async with Load(r.proxy_port, {"plain": plain}, gap=0.01).running():

                async def both_versions() -> bool:
                    return set(by_version(await prometheus.query(readme))) == {
                        "stable", "canary"}

                await wait_until(both_versions, timeout=20, interval=0.2,
                                 what="the error rate of both versions")
                results = [by_version(await prometheus.query(q)) for q in (readme, grafana)]
                bare = by_version(await prometheus.query(without_or))
    for result in results:
        assert result == {"stable": 0.0, "canary": 1.0}
    # What the `or` is for: the ratio alone has nothing to say about the healthy version.
    assert bare == {"canary": 1.0}


STEPS = (1.0, 3.0)  # query steps, as Grafana picks them from the time range


def values_of(result: list[dict[str, Any]]) -> set[int]:
    return {math.floor(float(v)) for s in result for _, v in s["values"]}


def grafana_events(result: list[dict[str, Any]], step_ms: int) -> list[tuple[int, int]]:
    """(time, time_end) of each annotation Grafana makes of an annotation query's answer
    with "series value as timestamp" (its Prometheus data source, processAnnotationResponse):
    per series, the values > 0 as milliseconds, points up to `step_ms` apart joined."""
    events = []
    for series in result:
        stamps = [math.floor(float(v)) for _, v in series["values"] if float(v) > 0]
        latest: list[int] | None = None
        for stamp in stamps:
            if latest is not None and latest[1] + step_ms >= stamp:
                latest[1] = stamp
                continue
            if latest is not None:
                events.append((latest[0], latest[1]))
            latest = [stamp, stamp]
        if latest is not None:
            events.append((latest[0], stamps[-1]))
    return events


async def test_each_abort_is_one_annotation_and_the_phase_panel_shows_it(
    tmp_path: Path, prometheus: PrometheusServer,
) -> None:
    [annotation] = [a for a in dashboard()["annotations"]["list"]
                    if a["name"] == "Rollout aborts"]
    assert annotation["useValueForTime"] is True
    abort_expr = fill(annotation["expr"])
    phase_expr = panel_expr("Rollout phase")
    rollout = {"steps": [{"set_weight": 50}, {"pause": {}}]}
    async with run_upstreams("stable", "canary") as ups:
        cfg = replica_config(ups, redis=None, weights={"stable": 100, "canary": 0},
                             rollout=rollout)
        async with run_replicas(tmp_path, [cfg]) as [r]:
            await prometheus.start([f"127.0.0.1:{r.admin_port}"])
            began = time.time()

            async def phase_is(code: int) -> bool:
                got = await prometheus.query(phase_expr)
                return [(s["metric"]["route"], s["value"][1]) for s in got] == [
                    ("shop", str(code))]

            async def annotated(stamp: float) -> bool:
                got = await prometheus.query(abort_expr)
                return [float(s["value"][1]) for s in got] == [stamp * 1000]

            async def in_ranges(stamp: float) -> bool:
                """Seen at every query step (the points of a range query are `began` plus
                multiples of the step: once there, a value stays there)."""
                for step in STEPS:
                    got = await prometheus.query_range(abort_expr, began, time.time(), step)
                    if math.floor(stamp * 1000) not in values_of(got):
                        return False
                return True

            await wait_until(lambda: phase_is(2), timeout=20, interval=0.2,
                             what="paused (2) on the phase panel")
            aborts = []
            for i in range(2):
                aborted_at = await abort(r, f"test abort {i}")
                aborts.append(aborted_at)
                await wait_until(lambda: phase_is(4), timeout=20, interval=0.2,
                                 what="aborted (4) on the phase panel")
                await wait_until(functools.partial(annotated, aborted_at), timeout=20,
                                 interval=0.2, what=f"abort {i} in the annotation query")
                await wait_until(functools.partial(in_ranges, aborted_at), timeout=20,
                                 interval=0.2,
                                 what=f"abort {i} at every query step")
                code, body = await r.act("retry")
                assert code == 200, body
                await wait_until(lambda: phase_is(2), timeout=20, interval=0.2,
                                 what="paused again after the retry")
            end = time.time()
            ranges = {step: await prometheus.query_range(abort_expr, began, end, step)
                      for step in STEPS}

    first, second = (math.floor(t * 1000) for t in aborts)
    for step, result in ranges.items():
        # At any query step, each abort is one value (its time) however many steps see it...
        assert values_of(result) == {first, second}, step
        # ... so Grafana makes one annotation of each, at the abort's time.
        assert grafana_events(result, step_ms=1000) == [(first, first), (second, second)]
        # With the dashboard's own 30 s, two aborts closer than that are one region between
        # them, never two marks for one abort.
        assert grafana_events(result, step_ms=30_000) == [(first, second)]


async def abort(r: Replica, reason: str) -> float:
    code, body = await r.act("abort", reason=reason)
    assert code == 200, body
    aborted_at = body["rollout"]["aborted_at"]
    assert isinstance(aborted_at, float)
    return aborted_at
