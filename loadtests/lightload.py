"""What busy polling (`performance.busy_poll`, `auto` by default) costs and buys at light
traffic: one client on one keep-alive connection sends a request at a fixed rate (it waits for
each answer, then for its next turn: a client that thinks), in front of a fast upstream (nginx)
and a slow one (`loadtests.upstream`, told to answer 2 ms late).

    python -m loadtests.lightload                     # 100 and 1000 req/s, 20 s each, 3 rounds
    python -m loadtests.lightload --rates 200 --duration 10 --rounds 1

Targets: the compiled build as configured by default, the same with `busy_poll: 0s`, and nginx
in front of the same upstream. For each: the latency the client saw (p50, p99) and the CPU the
proxy took (every process of its group, from /proc: clock ticks of 10 ms, so runs are long),
as a share of one vCPU and a request. The polling's cost is the difference of the two
splitproxy rows' CPU a request.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from loadtests import bench, compiled, machine
from loadtests.harness import read_response as read_response  # its client reads with it

DEFAULT = "splitproxy-compiled"
OFF = "splitproxy-compiled-nopoll"
SLOW_MS = 2.0
REQUEST = b"GET / HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: lightload\r\n\r\n"


@dataclass(frozen=True)
class Row:
    upstream: str
    rate: float
    target: str
    rps: float  # what the client got through: below `rate` when the answers take longer
    p50_ms: float
    p99_ms: float
    cpu_pct: float
    cpu_us: float


def paced(port: int, rate: float, duration: float) -> list[float]:
    """Latencies (s) of requests sent `rate` a second on one connection for `duration`."""
    latencies: list[float] = []
    with socket.create_connection((bench.HOST, port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        start = time.perf_counter()
        for i in range(int(rate * duration)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:  # a late answer: start the schedule again, rather than send to catch up
                start -= delay
            sent = time.perf_counter()
            sock.sendall(REQUEST)
            read_response(sock, buffer)
            latencies.append(time.perf_counter() - sent)
    return latencies


def measure(port: int, pgid: int, rate: float, duration: float) -> tuple[float, ...]:
    """req/s, p50 and p99 (ms), CPU (% of one vCPU) and CPU a request (µs) of one paced
    run."""
    ticks = sum(machine.group_ticks(pgid))
    start = time.monotonic()
    latencies = paced(port, rate, duration)
    elapsed = time.monotonic() - start
    cpu = (sum(machine.group_ticks(pgid)) - ticks) / bench.CLOCK_TICKS
    cuts = statistics.quantiles(latencies, n=100)
    return (len(latencies) / elapsed, 1e3 * cuts[49], 1e3 * cuts[98], 100 * cpu / elapsed,
            1e6 * cpu / len(latencies))


def slow_upstream(children: bench.Children) -> int:
    """The fault-injectable upstream (`loadtests.upstream`), told to answer SLOW_MS late."""
    port = bench.free_port()
    proc = children.start("slow", [sys.executable, "-m", "loadtests.upstream",
                                   f"slow=stable:{port}"])
    bench.wait_ready(children, "slow", proc, port)
    control = urllib.request.Request(
        f"http://{bench.HOST}:{port}/_control", method="POST",
        data=json.dumps({"delay_ms": SLOW_MS}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(control, timeout=5) as answer:
        answer.read()
    return port


def run(args: argparse.Namespace, nginx: str, tmp: Path) -> tuple[list[Row], dict[str, str]]:
    """The rows, and what each splitproxy target said of its busy polling."""
    children = bench.Children(tmp)
    polling: dict[str, str] = {}
    rows: dict[tuple[str, float, str], list[tuple[float, ...]]] = {}
    try:
        upstreams = {"nginx": bench.start_nginx_upstream(children, nginx, tmp),
                     f"slow (+{SLOW_MS:g} ms)": slow_upstream(children)}
        ports: dict[tuple[str, str], tuple[int, str]] = {}  # -> (port, the child's name)
        for index, (name, up) in enumerate(upstreams.items()):
            env = compiled.run_env()
            ports[(name, DEFAULT)] = (bench.start_splitproxy(
                children, tmp, up, f"sp{index}", env=env), f"sp{index}")
            ports[(name, OFF)] = (bench.start_splitproxy(
                children, tmp, up, f"off{index}", env=env,
                extra="performance: {busy_poll: 0s}\n"), f"off{index}")
            ports[(name, bench.NGINX_PROXY)] = (bench.start_nginx_proxy(
                children, nginx, tmp, up, name=f"nginx{index}"), f"nginx{index}")
        pgids = {name: proc.pid for name, proc in children.procs}
        for target, child in ((DEFAULT, "sp0"), (OFF, "off0")):
            polling[target] = _started_as(children, child)
        for port, _ in ports.values():  # warm each up, unmeasured
            paced(port, 1000, 0.5)
        for rnd in range(args.rounds):
            for rate in args.rates:
                for (upstream, target), (port, child) in ports.items():
                    sys.stderr.write(f"lightload: round {rnd + 1}/{args.rounds}, {rate:g} req/s, "
                                     f"{upstream}, {target}\n")
                    rows.setdefault((upstream, rate, target), []).append(
                        measure(port, pgids[child], rate, args.duration))
    finally:
        children.stop_all()
    medians = [Row(upstream, rate, target,
                   *(statistics.median(sample[i] for sample in samples) for i in range(5)))
               for (upstream, rate, target), samples in rows.items()]
    return medians, polling


def _started_as(children: bench.Children, name: str) -> str:
    """What a splitproxy child's log says it runs: the compiled data plane, and its busy
    polling (`auto` may have chosen off here, which makes the two rows the same config)."""
    tail = bench.require_compiled(children, name)
    said = [line for line in tail.splitlines() if "busy polling: " in line]
    if not said:
        raise RuntimeError(f"{name} did not log its busy polling:\n{tail}")
    return said[-1].split("busy polling: ", 1)[1]


def markdown(rows: list[Row]) -> str:
    lines = ["| upstream | rate | target | req/s | p50 | p99 | CPU (of one vCPU) | CPU a request |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.upstream} | {r.rate:g}/s | {r.target} | {r.rps:,.0f} | {r.p50_ms:.3f} ms | "
              f"{r.p99_ms:.3f} ms | {r.cpu_pct:.1f}% | {r.cpu_us:.0f} µs |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 1000.0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds a run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    tools = bench.find_tools()
    if tools is None:
        return 2
    if (problem := compiled.missing_build()) is not None:
        sys.stderr.write(f"lightload: {problem}\n")
        return 2
    with tempfile.TemporaryDirectory(prefix="lightload-") as tmp:
        rows, polling = run(args, tools[1], Path(tmp))
    print(f"splitproxy at light traffic: one paced connection, median of {args.rounds} "
          f"round(s) of {args.duration:g} s; busy polling: "
          + "; ".join(f"{target} {said}" for target, said in polling.items()) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
