"""Benchmark: splitproxy against nginx as a proxy, both in front of the same tiny upstream.

A benchmark, not a test. It starts, all on 127.0.0.1 and on free ports:

* a tiny upstream: nginx returning ``ok`` (or the aiohttp demo upstream, ``--upstream aiohttp``);
* splitproxy, one worker, one route split 90/10 between two versions that both point at it;
* nginx as a reverse proxy, one worker, keep-alive to the upstream;

then runs ``wrk --latency`` against each of the three, interleaved over ``--rounds`` rounds (the
order rotates every round) so that machine noise hits all of them alike, and prints the median
req/s, p50 and p99 of each as a markdown table, with ratios to nginx-as-a-proxy, for each of
``--connections`` (1, 64 and 512 by default).

Before that, while both proxies are fresh, it measures memory: each proxy's resident set size
(RSS, its process tree, from /proc) before and while a helper process (``idle_clients.py``)
holds ``--idle-connections`` (10,000) idle keep-alive client connections open to it, and the
peak (VmHWM). The target for splitproxy is < 150 MB. RLIMIT_NOFILE is raised here, so the
proxies inherit it, and in the helper.

    python loadtests/bench.py [--duration 10] [--rounds 3] [--connections 1 64 512]
                              [--idle-connections 10000] [--json FILE]

Needs ``wrk`` and ``nginx`` (Debian: ``apt-get install wrk nginx-light``); exits 2 without them.
Every child process is stopped when it ends, however it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

try:
    from loadtests import compiled, machine, nginxconf
    from loadtests.harness import free_port as free_port  # bench_tls, bench_h2 use it
    from loadtests.idle_clients import measure_idle, memory_markdown, raise_nofile
except ImportError:  # run as `python loadtests/bench.py`: loadtests/ itself is on sys.path
    import compiled  # type: ignore[import-not-found,no-redef]
    import machine  # type: ignore[import-not-found,no-redef]
    import nginxconf  # type: ignore[import-not-found,no-redef]
    from harness import free_port as free_port  # type: ignore[import-not-found,no-redef]
    from idle_clients import (  # type: ignore[no-redef,import-not-found]
        measure_idle,
        memory_markdown,
        raise_nofile,
    )

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
NGINX_PROXY = "nginx-proxy"
# The order of the table's rows; ratios are taken against NGINX_PROXY.
TARGETS = ("upstream", "splitproxy", NGINX_PROXY)
# Optional splitproxy variants (--variants): two workers on one port (SO_REUSEPORT), one
# worker that does not count (what the per-version counters behind /metrics cost), and one
# with the access log on (`logging.access_log`, a line per request to its log file, as a
# log file would take it); and the same one worker with its hot modules compiled by mypyc
# (`make compiled`: build/compiled), also with busy polling off (`performance.busy_poll: 0s`;
# the default, auto, polls on a virtual machine like this one, trading CPU for the wake-ups of
# a low-concurrency request). Each is (workers, environment, top-level config lines).
COMPILED = "splitproxy-compiled"
NO_POLL = "splitproxy-compiled-nopoll"
VARIANTS: dict[str, tuple[int, dict[str, str], str]] = {
    "splitproxy-2w": (2, {}, ""),
    "splitproxy-nostats": (1, {"SPLITPROXY_BENCH_NO_STATS": "1"}, ""),
    "splitproxy-accesslog": (1, {}, "logging: {access_log: true}\n"),
    COMPILED: (1, compiled.run_env(), ""),
    NO_POLL: (1, compiled.run_env(), "performance: {busy_poll: 0s}\n"),
}
DEFAULT_VARIANTS = ("splitproxy-2w", "splitproxy-nostats", COMPILED, NO_POLL)
START_TIMEOUT = 15.0
# /proc's CPU times count in these (100 a second on Linux): 10 ms, about 0.2% of a 5 s run.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
INSTALL_HINT = "apt-get install wrk nginx-light"


# --- wrk output --------------------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.M)


@dataclass(frozen=True, slots=True)
class Sample:
    """One wrk run against one target."""

    target: str
    connections: int
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors + non-2xx/3xx responses
    steal_ms: float | None = None  # what the host took from the busiest vCPU during the run
    # The target's CPU time during the run (every process of its group, user + system):
    # as a share of one vCPU, and a request.
    cpu_pct: float | None = None
    cpu_us: float | None = None


def to_seconds(value: str, unit: str) -> float:
    """wrk's ``812.00us`` / ``1.20ms`` / ``2.00s`` / ``1.00m`` -> seconds."""
    return float(value) * _UNITS[unit]


def parse_wrk(output: str, target: str, connections: int, round_: int) -> Sample:
    """Read req/s, p50, p99 and errors from ``wrk --latency`` output."""
    rps = _RPS.search(output)
    latencies = {m.group(1): to_seconds(m.group(2), m.group(3)) for m in _LATENCY.finditer(output)}
    if rps is None or set(latencies) != {"50", "99"}:
        raise ValueError(f"cannot read wrk output for {target}:\n{output}")
    requests = _REQUESTS.search(output)
    socket_errors = _SOCKET_ERRORS.search(output)
    errors = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    non_2xx = _NON_2XX.search(output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return Sample(
        target=target,
        connections=connections,
        round=round_,
        rps=float(rps.group(1)),
        p50_ms=latencies["50"] * 1e3,
        p99_ms=latencies["99"] * 1e3,
        requests=int(requests.group(1)) if requests else 0,
        errors=errors,
    )


# --- processes ---------------------------------------------------------------------------------


class Children:
    """The processes this run started; `stop_all` ends each one, and its process group."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cpus: frozenset[int] | None = None) -> subprocess.Popen[bytes]:
        """`cpus`: the CPUs the child and everything it starts may run on (None: any)."""
        # The child keeps its own copy of the descriptor; ours can close at once.
        with open(self.logdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **env} if env else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,  # one group per child: its workers go with it
                preexec_fn=machine.pin_to(cpus),
            )
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.logdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5.0)
        # Whatever a child forked and left behind in its group.
        for _, proc in self.procs:
            _signal_group(proc, signal.SIGKILL)
        self.procs.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_ready(children: Children, name: str, proc: subprocess.Popen[bytes], port: int) -> None:
    """Wait until http://HOST:port/ answers 200, or fail with the child's log."""
    url = f"http://{HOST}:{port}/"
    deadline = time.monotonic() + START_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{children.log_tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(
        f"{name} did not answer 200 on {url} within {START_TIMEOUT:.0f}s (last: {last}):\n"
        f"{children.log_tail(name)}"
    )


# --- the three servers -------------------------------------------------------------------------


def start_nginx(
    children: Children, nginx: str, tmp: Path, name: str, http_block: str, connections: int = 4096,
    cpus: frozenset[int] | None = None,
) -> int:
    port = free_port()
    conf = nginxconf.main_conf(tmp, name, http_block.replace("{port}", str(port)), connections)
    argv = [nginx, "-e", str(tmp / f"{name}-error.log"), "-p", str(tmp), "-c", str(conf)]
    argv += ["-g", "daemon off;"]
    proc = children.start(name, argv, cpus=cpus)
    wait_ready(children, name, proc, port)
    return port


def start_nginx_upstream(children: Children, nginx: str, tmp: Path, name: str = "upstream",
                         cpus: frozenset[int] | None = None) -> int:
    return start_nginx(children, nginx, tmp, name, nginxconf.UPSTREAM, cpus=cpus)


def start_aiohttp_upstream(children: Children, cpus: frozenset[int] | None = None) -> int:
    port = free_port()
    code = (
        "from aiohttp import web; from splitproxy.cli.demoapp import make_upstream_app; "
        f"web.run_app(make_upstream_app('upstream'), host={HOST!r}, port={port}, "
        "access_log=None, print=None)"
    )
    proc = children.start("upstream", [sys.executable, "-c", code], cpus=cpus)
    wait_ready(children, "upstream", proc, port)
    return port


@dataclass(frozen=True, slots=True)
class Mirroring:
    """Shadow traffic for a proxy under test: a copy of `percent` of the requests to the
    upstream on port `shadow` (splitproxy's `mirror`, nginx's `mirror` directive)."""

    shadow: int
    percent: float


def nginx_mirror(mirror: Mirroring | None) -> tuple[str, str]:
    """(http-level, server-level) directives of nginx's mirror, to put around the proxy block.
    `mirror` takes no variables, so a share below 100% is the usual recipe: every request
    makes the mirror subrequest, and `split_clients` lets `percent` of them through; the rest
    end at once with a 204 that goes nowhere (nginx discards a mirror subrequest's answer).
    At server level it applies to `location /`; nginx never mirrors a subrequest, so the
    internal location does not mirror itself."""
    if mirror is None:
        return "", ""
    pick = (f'split_clients "$request_id" $mirrored {{ {mirror.percent:g}% 1; * ""; }}'
            if mirror.percent < 100 else "map $uri $mirrored { default 1; }")
    http = f"""
upstream shadow {{
    server {HOST}:{mirror.shadow};
    keepalive 64;
    keepalive_requests 100000000;
}}
{pick}
"""
    server = """
mirror /_mirror;
location = /_mirror {
    internal;
    if ($mirrored = "") { return 204; }
    proxy_pass http://shadow$request_uri;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_set_header X-Splitproxy-Shadow 1;
}
"""
    return http, server


def start_nginx_proxy(
    children: Children, nginx: str, tmp: Path, upstream: int, connections: int = 4096,
    name: str = NGINX_PROXY, mirror: Mirroring | None = None, cpus: frozenset[int] | None = None,
) -> int:
    # The same header work splitproxy does (nginxconf.proxy), with the mirror around it.
    mirror_http, mirror_server = nginx_mirror(mirror)
    return start_nginx(children, nginx, tmp, name,
                       mirror_http + nginxconf.proxy(upstream, server=mirror_server), connections,
                       cpus)


# `--analysis`: the route is guarded with three latency limits, so every request is also
# timed against each limit on the hot path (the most a route can ask for).
ANALYSIS = ("    analysis: {max_error_rate: 0.01, max_p50_ms: 100, max_p90_ms: 150, "
            "max_p99_ms: 200}\n")


def start_splitproxy(children: Children, tmp: Path, upstream: int, name: str = "splitproxy",
                     workers: int = 1, env: dict[str, str] | None = None,
                     analysis: bool = False, extra: str = "",
                     mirror: Mirroring | None = None, cpus: frozenset[int] | None = None
                     ) -> int:
    """`mirror`: the canary (weight 0) is the shadow upstream and gets copies, the stable
    version takes every request; else a 90/10 split over the one upstream."""
    port, admin = free_port(), free_port()
    canary, weights, copies = upstream, "{stable: 90, canary: 10}", ""
    if mirror is not None:
        canary, weights = mirror.shadow, "{stable: 100, canary: 0}"
        # Bounded as nginx's is not: high enough that a fast shadow never hits it.
        copies = (f"    mirror: {{to: canary, percent: {mirror.percent:g}, "
                  "max_in_flight: 1024}\n")
    # The config's directory is watched for edits: the proxy's own log (a file in `tmp`) must
    # not be in it, or every access log line would wake the watcher.
    config = tmp / f"{name}-config" / "config.yaml"
    config.parent.mkdir()
    config.write_text(
        textwrap.dedent(
            f"""\
            listen: {HOST}:{port}
            admin: {{listen: {HOST}:{admin}}}
            routes:
              - name: bench
                versions:
                  stable: {{endpoints: ["http://{HOST}:{upstream}"]}}
                  canary: {{endpoints: ["http://{HOST}:{canary}"]}}
                weights: {weights}
            """
        ) + copies + (ANALYSIS if analysis else "") + extra
    )
    argv = [sys.executable, "-m", "splitproxy", "run", "-c", str(config),
            "--workers", str(workers)]
    proc = children.start(name, argv, env, cpus)
    wait_ready(children, name, proc, port)
    return port


def require_compiled(children: Children, name: str) -> str:
    """Fail unless the child's startup line (splitproxy.dataplane.build) says it runs the
    compiled data plane; its log's tail, for what else it said."""
    tail = children.log_tail(name, 200)
    if "data plane: compiled" not in tail:
        raise RuntimeError(f"{name} runs the interpreted data plane:\n{tail}")
    return tail


# --- running wrk -------------------------------------------------------------------------------


def wrk_argv(wrk: str, port: int, threads: int, connections: int, duration: float) -> list[str]:
    # wrk wants at least one connection per thread.
    threads = min(threads, connections)
    return [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency",
            f"http://{HOST}:{port}/"]


def _run(argv: list[str], duration: float, cpus: frozenset[int] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False,
                          preexec_fn=machine.pin_to(cpus))
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def run_wrk(wrk: str, port: int, threads: int, connections: int, duration: float,
            cpus: frozenset[int] | None = None) -> str:
    return _run(wrk_argv(wrk, port, threads, connections, duration), duration, cpus)


def sample_wrk(wrk: str, port: int, target: str, threads: int, connections: int, round_: int,
               duration: float, cpus: frozenset[int] | None = None,
               pgid: int | None = None) -> Sample:
    """One measured wrk run, with the steal time of its interval (`machine`) and, given the
    target's process group, the CPU time the target took."""
    before = machine.stolen_ms()
    ticks = sum(machine.group_ticks(pgid)) if pgid is not None else 0
    start = time.monotonic()
    out = run_wrk(wrk, port, threads, connections, duration, cpus)
    elapsed = time.monotonic() - start
    stolen = machine.steal_between(before, machine.stolen_ms())
    sample = replace(parse_wrk(out, target, connections, round_), steal_ms=stolen)
    if pgid is None:
        return sample
    cpu = (sum(machine.group_ticks(pgid)) - ticks) / CLOCK_TICKS
    return replace(sample, cpu_pct=100 * cpu / elapsed,
                   cpu_us=1e6 * cpu / sample.requests if sample.requests else None)



def warm_up_runs(wrk: str, ports: Mapping[str, int], targets: Sequence[str], threads: int,
                 connections: int, seconds: float) -> list[tuple[str, list[str]]]:
    """The wrk run, as (target, argv), that warms each target up before it is measured; none
    for a zero warm-up, which wrk could not run (it refuses `-d0s`)."""
    if seconds <= 0:
        return []
    return [(t, wrk_argv(wrk, ports[t], threads, connections, seconds)) for t in targets]


def warm_up(wrk: str, ports: Mapping[str, int], targets: Sequence[str], threads: int,
            connections: int, seconds: float, log: str = "bench",
            cpus: frozenset[int] | None = None) -> None:
    """Runs `warm_up_runs`, saying each on stderr after `log`."""
    for target, argv in warm_up_runs(wrk, ports, targets, threads, connections, seconds):
        sys.stderr.write(f"{log}: warm-up {target}\n")
        _run(argv, seconds, cpus)


def median_of(samples: list[Sample]) -> dict[str, Any]:
    return {
        "rps": statistics.median(s.rps for s in samples),
        "p50_ms": statistics.median(s.p50_ms for s in samples),
        "p99_ms": statistics.median(s.p99_ms for s in samples),
        "errors": sum(s.errors for s in samples),
        "rounds": len(samples),
        # The worst round's: one host pause decides a p99 (machine.py).
        "steal_ms": max((s.steal_ms for s in samples if s.steal_ms is not None), default=None),
        "cpu_pct": _median_or_none([s.cpu_pct for s in samples]),
        "cpu_us": _median_or_none([s.cpu_us for s in samples]),
    }


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize(samples: list[Sample], connections: list[int],
              targets: tuple[str, ...] = TARGETS) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for conns in connections:
        medians = {
            t: median_of([s for s in samples if s.target == t and s.connections == conns])
            for t in targets
        }
        ref = medians[NGINX_PROXY]
        for target in targets:
            m = medians[target]
            rows.append(
                {
                    "target": target,
                    "connections": conns,
                    **m,
                    "rps_vs_nginx": m["rps"] / ref["rps"] if ref["rps"] else None,
                    "p99_vs_nginx": m["p99_ms"] / ref["p99_ms"] if ref["p99_ms"] else None,
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    lines = [
        "| target | conns | req/s | p50 | p99 | req/s vs nginx | p99 vs nginx | errors "
        "| CPU (of one vCPU) | CPU a request | host steal (worst round, busiest vCPU) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        steal = "-" if r.get("steal_ms") is None else f"{r['steal_ms']:.0f} ms"
        cpu = "-" if r.get("cpu_pct") is None else f"{r['cpu_pct']:.0f}%"
        per = "-" if r.get("cpu_us") is None else f"{r['cpu_us']:.0f} µs"
        lines.append(
            f"| {r['target']} | {r['connections']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} ms "
            f"| {r['p99_ms']:.2f} ms | {ratio(r['rps_vs_nginx'])} | {ratio(r['p99_vs_nginx'])} "
            f"| {r['errors']} | {cpu} | {per} | {steal} |"
        )
    return "\n".join(lines)


def workers_markdown(rows: list[dict[str, Any]], workers: list[int]) -> str:
    """req/s per worker for each N of `--workers`, and how far from linear (N x one worker)."""
    lines = ["| conns | workers | req/s | req/s per worker | vs N x 1 worker | p99 |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    by = {(r["target"], r["connections"]): r for r in rows}
    for conns in sorted({r["connections"] for r in rows}):
        one = by.get(("splitproxy", conns))
        for n in sorted(set(workers)):
            r = by.get(("splitproxy" if n == 1 else f"splitproxy-{n}w", conns))
            if r is None:
                continue
            linear = f"{r['rps'] / (n * one['rps']):.2f}x" if one and one["rps"] else "-"
            lines.append(f"| {conns} | {n} | {r['rps']:,.0f} | {r['rps'] / n:,.0f} | {linear} "
                         f"| {r['p99_ms']:.2f} ms |")
    return "\n".join(lines)


def placement(layout: machine.Layout | None) -> str:
    """The CPU placement of a run, in words."""
    if layout is None:
        return "placement: the scheduler's"
    if layout.proxy == layout.rest:
        return f"pinned: every process on CPU {','.join(map(str, sorted(layout.proxy)))}"
    return (f"pinned: each proxy on CPU {','.join(map(str, sorted(layout.proxy)))}, upstream "
            f"and wrk on {','.join(map(str, sorted(layout.rest)))}")


def _tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


# --- main --------------------------------------------------------------------------------------


def wrk_seconds(value: str) -> int:
    """An argparse type for wrk's -d: whole seconds (wrk rejects `-d1.5s` with its usage text,
    after the servers have started)."""
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: whole seconds (wrk takes no fractions)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be >= 0")
    return seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=wrk_seconds, default=10, help="seconds per wrk run (10)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per target (3)")
    p.add_argument("--connections", type=int, nargs="+", default=[1, 64, 512],
                   help="wrk -c values (1 64 512)")
    p.add_argument("--threads", type=int, default=2, help="wrk -t (2)")
    p.add_argument("--warmup", type=wrk_seconds, default=2,
                   help="seconds of warm-up per target (2; 0: none)")
    p.add_argument(
        "--upstream",
        choices=("nginx", "aiohttp"),
        default="nginx",
        help="the tiny upstream: nginx (default) or the aiohttp demo upstream",
    )
    p.add_argument("--idle-connections", type=int, default=10_000,
                   help="idle keep-alive connections for the memory measurement (10000; 0: skip)")
    p.add_argument("--variants", nargs="*", choices=sorted(VARIANTS),
                   default=list(DEFAULT_VARIANTS),
                   help="extra splitproxy targets (default: splitproxy-2w splitproxy-nostats "
                   f"{COMPILED} {NO_POLL}, the last two need `make compiled`; "
                   "splitproxy-accesslog: the access log on; none: --variants)")
    p.add_argument("--json", metavar="FILE", help="also write every sample and the medians")
    p.add_argument("--analysis", action="store_true",
                   help="guard the splitproxy route with an error-rate and three latency limits")
    p.add_argument("--workers", type=int, nargs="*", default=[], metavar="N",
                   help="also splitproxy with N workers (SO_REUSEPORT) for each N, and a table "
                   "of req/s per worker (1 is the plain splitproxy target)")
    p.add_argument("--memory-only", action="store_true",
                   help="only the idle-connection memory (splitproxy and nginx), no wrk runs")
    p.add_argument("--pin", nargs="?", const="split", choices=["split", "shared"],
                   help="split (the default): the proxies on the first CPU, the upstream and "
                   "wrk on the others; shared: every process on the last CPU, so no wake-up "
                   "crosses CPUs (the same placement for both proxies either way; one worker "
                   "each; for the one-connection figure: with more connections the load "
                   "side's CPU caps both)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1 or args.threads < 1 or args.warmup < 0:
        p.error("--duration, --rounds and --threads must be positive, --warmup >= 0")
    if any(c < 1 for c in args.connections) or args.idle_connections < 0:
        p.error("--connections values must be >= 1, --idle-connections >= 0")
    if any(n < 1 for n in args.workers):
        p.error("--workers values must be >= 1")
    for n in args.workers:
        if n > 1 and f"splitproxy-{n}w" not in args.variants:
            VARIANTS.setdefault(f"splitproxy-{n}w", (n, {}, ""))
            args.variants.append(f"splitproxy-{n}w")
    if args.pin:
        several = [v for v in args.variants if VARIANTS[v][0] > 1]
        if several:
            p.error(f"--pin runs every proxy on one CPU: leave out {' '.join(several)} "
                    "(--variants ...)")
        try:
            args.layout = (machine.shared_layout() if args.pin == "shared"
                           else machine.pinned_layout())
        except ValueError as exc:
            p.error(str(exc))
    else:
        args.layout = None
    if args.memory_only:
        if not args.idle_connections:
            p.error("--memory-only needs --idle-connections > 0")
        args.variants, args.connections, args.warmup = [], [], 0.0
    return args


def find_tools() -> tuple[str, str] | None:
    """(wrk, nginx) paths, or None after saying what is missing and how to install it."""
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    wrk, nginx = shutil.which("wrk", path=search), shutil.which("nginx", path=search)
    missing = [name for name, path in (("wrk", wrk), ("nginx", nginx)) if path is None]
    if missing or wrk is None or nginx is None:
        sys.stderr.write(
            f"bench: {' and '.join(missing)} not found; the benchmark needs wrk and nginx.\n"
            f"  Debian/Ubuntu: {INSTALL_HINT}\n"
        )
        return None
    return wrk, nginx


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so the finally below stops every child


def prepare_run() -> tuple[str, str] | None:
    """`find_tools`, then SIGTERM made to end the run through the caller's `finally`, which
    stops every child (for this benchmark and the bench_* ones)."""
    tools = find_tools()
    if tools is not None:
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
    return tools


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    built = [v for v in (COMPILED, NO_POLL) if v in args.variants]
    if built and (problem := compiled.missing_build()) is not None:
        sys.stderr.write(f"bench: {' '.join(built)}: {problem} (or leave them out: "
                         "--variants ...)\n")
        return 2
    tools = prepare_run()
    if tools is None:
        return 2
    wrk, nginx = tools
    # The proxies inherit this: each must hold the idle connections plus its upstream ones.
    nofile = raise_nofile(args.idle_connections + 4096)
    nginx_conns = max(4096, args.idle_connections + 1024)
    layout: machine.Layout | None = args.layout
    proxy_cpus, rest_cpus = (layout.proxy, layout.rest) if layout else (None, None)

    targets = (*TARGETS[:2], *args.variants, NGINX_PROXY)
    runs = args.rounds * len(args.connections) * len(targets)
    estimate = runs * args.duration + len(targets) * args.warmup
    sys.stderr.write(
        f"bench: {runs} wrk runs of {args.duration:g}s (+ warm-up), about {estimate:.0f}s\n"
    )

    samples: list[Sample] = []
    memory: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="splitproxy-bench-") as tmpdir:
        tmp = Path(tmpdir)
        children = Children(tmp)
        try:
            if args.upstream == "nginx":
                upstream = start_nginx_upstream(children, nginx, tmp, cpus=rest_cpus)
            else:
                upstream = start_aiohttp_upstream(children, rest_cpus)
            ports = {
                "upstream": upstream,
                "splitproxy": start_splitproxy(children, tmp, upstream, analysis=args.analysis,
                                               cpus=proxy_cpus),
                NGINX_PROXY: start_nginx_proxy(children, nginx, tmp, upstream, nginx_conns,
                                               cpus=proxy_cpus),
            }
            for variant in args.variants:
                workers, env, extra = VARIANTS[variant]
                ports[variant] = start_splitproxy(children, tmp, upstream, variant, workers, env,
                                                  args.analysis, extra, cpus=proxy_cpus)
                if variant in (COMPILED, NO_POLL):
                    require_compiled(children, variant)
            if args.idle_connections:
                if nofile < args.idle_connections + 256:
                    raise RuntimeError(f"RLIMIT_NOFILE is {nofile}: too low to hold "
                                       f"{args.idle_connections} connections (raise it, or "
                                       "pass a smaller --idle-connections)")
                pids = {name: proc.pid for name, proc in children.procs}
                for target in ("splitproxy", NGINX_PROXY):
                    sys.stderr.write(f"bench: {args.idle_connections} idle connections to "
                                     f"{target}\n")
                    row = measure_idle(children, target, pids[target], ports[target],
                                       args.idle_connections)
                    memory.append(row)
                    sys.stderr.write(f"bench: {target}: RSS {row['rss_mb']:.1f} MB with "
                                     f"{row['opened']} connections, peak {row['peak_rss_mb']:.1f} "
                                     "MB\n")
            # Each child leads its own process group (`Children.start`): its workers count.
            pgids = {name: proc.pid for name, proc in children.procs}
            if args.connections:  # none: --memory-only
                warm_up(wrk, ports, targets, args.threads, args.connections[0], args.warmup,
                        cpus=rest_cpus)
            for conns in args.connections:
                for rnd in range(args.rounds):
                    # Rotate the order so no target always runs first (or last).
                    k = rnd % len(targets)
                    for target in targets[k:] + targets[:k]:
                        sample = sample_wrk(wrk, ports[target], target, args.threads, conns,
                                            rnd + 1, args.duration, rest_cpus, pgids[target])
                        samples.append(sample)
                        stole = "" if sample.steal_ms is None else (
                            f", host steal {sample.steal_ms:.0f} ms")
                        if sample.cpu_pct is not None:
                            stole += f", CPU {sample.cpu_pct:.0f}%"
                        sys.stderr.write(
                            f"bench: c={conns} round {rnd + 1}/{args.rounds} {target}: "
                            f"{sample.rps:,.0f} req/s, p99 {sample.p99_ms:.2f} ms"
                            f"{f', {sample.errors} errors' if sample.errors else ''}{stole}\n"
                        )
        except RuntimeError as exc:
            sys.stderr.write(f"bench: {exc}\n")
            return 1
        finally:
            children.stop_all()

    rows = summarize(samples, args.connections, targets)
    if rows:
        sys.stdout.write(
            f"splitproxy benchmark: wrk -t{args.threads} -d{args.duration:g}s --latency, "
            f"median of {args.rounds} interleaved round(s); upstream: {args.upstream}; "
            f"{os.cpu_count()} CPUs; {placement(layout)}\n\n{markdown(rows)}\n"
        )
    if rows and args.workers:
        sys.stdout.write(f"\nworkers ({os.cpu_count()} CPUs, shared with wrk and the "
                         f"upstream)\n\n{workers_markdown(rows, args.workers)}\n")
    if memory:
        sys.stdout.write(
            f"\nmemory: RSS of each proxy's process tree, {args.idle_connections:,} idle "
            f"keep-alive client connections (MB = 10^6 bytes)\n\n"
            f"{memory_markdown(memory)}\n"
        )
    if args.json:
        report = {
            "meta": {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "duration_s": args.duration,
                "rounds": args.rounds,
                "threads": args.threads,
                "connections": args.connections,
                "idle_connections": args.idle_connections,
                "warmup_s": args.warmup,
                "upstream": args.upstream,
                "cpus": os.cpu_count(),
                "placement": placement(layout),
                "python": platform.python_version(),
                "wrk": _tool_version([wrk, "--version"]),
                "nginx": _tool_version([nginx, "-v"]),
            },
            "results": rows,
            "memory": memory,
            "samples": [asdict(s) for s in samples],
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
