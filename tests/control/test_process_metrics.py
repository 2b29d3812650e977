"""Process metrics on /metrics: `process_*` for the control process (prometheus-client's
ProcessCollector) and, with `--workers N`, `splitproxy_worker_*{worker}` for each worker
process, as the worker reports it with its counters."""

from __future__ import annotations

import os
from pathlib import Path

from splitproxy.dataplane import cpuidle
from splitproxy.dataplane.workers import WorkerPool
from tests.support.configs import proxy_config, route
from tests.support.ports import free_port
from tests.support.service import admin, metric, running_service, scrape
from tests.support.upstream import run_upstreams
from tests.support.waiting import WAIT, wait_until

PROCESS = ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
           "process_max_fds", "process_start_time_seconds")


async def test_the_control_process_exports_its_own_process_metrics(tmp_path: Path) -> None:
    async with run_upstreams("stable") as ups:
        cfg = proxy_config([route({"stable": ups["stable"].url})])
        async with running_service(tmp_path, cfg, watch=False) as (svc, _), \
                admin(svc) as session:
            samples = await scrape(session)
    values = {name: metric(samples, name) for name in PROCESS}
    assert all(v is not None for v in values.values()), values
    assert (values["process_resident_memory_bytes"] or 0) > 10e6  # a Python process at least
    assert (values["process_open_fds"] or 0) >= 3
    # One process serves and controls: no worker series.
    assert not [s for s in samples if s.name.startswith("splitproxy_worker_")]


async def test_each_worker_reports_its_memory_cpu_and_descriptors(tmp_path: Path) -> None:
    async with run_upstreams("stable") as ups:
        cfg = proxy_config([route({"stable": ups["stable"].url})])
        cfg["listen"] = f"127.0.0.1:{free_port()}"  # workers share one port (SO_REUSEPORT)
        async with running_service(tmp_path, cfg, watch=False, workers=2,
                                   start_wait=WAIT * 2) as (svc, _):
            async with admin(svc) as session:

                async def both_reported() -> bool:
                    samples = await scrape(session)
                    return all(metric(samples, "splitproxy_worker_resident_memory_bytes",
                                      worker=w) for w in ("0", "1"))

                await wait_until(both_reported, what="both workers' process metrics")
                samples = await scrape(session)
            pool = svc.proxy
            assert isinstance(pool, WorkerPool)
            pids = {w.index: w.process.pid for w in pool._workers.values()}
            usage = dict(pool.worker_usage())
    assert {i: u.pid for i, u in usage.items()} == pids  # each worker speaks for itself
    assert os.getpid() not in pids.values()
    for w in ("0", "1"):
        rss = metric(samples, "splitproxy_worker_resident_memory_bytes", worker=w)
        cpu = metric(samples, "splitproxy_worker_cpu_seconds_total", worker=w)
        fds = metric(samples, "splitproxy_worker_open_fds", worker=w)
        limit = metric(samples, "splitproxy_worker_max_fds", worker=w)
        started = metric(samples, "splitproxy_worker_start_time_seconds", worker=w)
        assert rss is not None and rss > 10e6
        assert cpu is not None and cpu > 0  # it imported splitproxy at least
        assert fds is not None and limit is not None and 3 <= fds < limit
        assert started is not None and started > 1.6e9
    # The control process's own are separate.
    assert metric(samples, "process_resident_memory_bytes") is not None
    # What each worker chose for busy polling, seen from where they all run.
    assert metric(samples, "splitproxy_busy_poll_window_seconds") == cpuidle.choose("auto").window
