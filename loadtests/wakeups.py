"""What a proxy costs the machine per request beyond its own instructions: CPU time in user
and kernel mode, the interrupts its wake-ups send between CPUs, and the host's steal.

    python -m loadtests.wakeups                         # build/compiled against nginx
    python -m loadtests.wakeups --build /tmp/before --build build/compiled --rounds 5

Each `--build` is a compiled data plane (`python -m loadtests.compiled --dest DIR`, run from
any checkout: the build of an older commit is how a change is measured against its parent);
`--interpreted` adds the source tree's. All of them and nginx run side by side in front of one
nginx upstream and take `wrk -t2 -cN` in turn, round after round. Per request, from
`/proc/PID/stat` (every process of the target's group), `/proc/interrupts` (RES: rescheduling,
CAL: function-call interrupts, summed over CPUs) and `/proc/stat` (steal of the busiest CPU).
A wake-up of a task that sleeps on another CPU is an interrupt; on a virtual machine each is a
trip through the host (README, "Writes batched per loop turn").
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtests import bench, compiled, machine

PROC = Path("/proc")
INTERRUPTS = ("RES", "CAL")


def interrupt_counts(text: str) -> dict[str, int]:
    """RES and CAL from /proc/interrupts, summed over the CPUs."""
    counts = {}
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0].rstrip(":") in INTERRUPTS:
            counts[fields[0].rstrip(":")] = sum(int(f) for f in fields[1:] if f.isdigit())
    return counts


@dataclass(frozen=True)
class Round:
    target: str
    rps: float
    user_us: float
    system_us: float
    res: float
    cal: float
    steal_ms: float | None


def measure(wrk: str, target: str, port: int, pgid: int, connections: int,
            duration: int) -> Round:
    tick = os.sysconf("SC_CLK_TCK")
    irq0 = interrupt_counts((PROC / "interrupts").read_text())
    cpu0, steal0 = machine.group_ticks(pgid), machine.stolen_ms()
    out = bench.run_wrk(wrk, port, 2, connections, duration)
    irq1 = interrupt_counts((PROC / "interrupts").read_text())
    cpu1, steal1 = machine.group_ticks(pgid), machine.stolen_ms()
    found = re.search(r"(\d+) requests in", out)
    n = int(found.group(1)) if found else 0
    if not n:
        raise RuntimeError(f"wrk made no request to {target}:\n{out}")
    per = 1e6 / tick / n
    return Round(target, n / duration, (cpu1[0] - cpu0[0]) * per, (cpu1[1] - cpu0[1]) * per,
                 (irq1.get("RES", 0) - irq0.get("RES", 0)) / n,
                 (irq1.get("CAL", 0) - irq0.get("CAL", 0)) / n,
                 machine.steal_between(steal0, steal1))


def markdown(rounds: list[Round]) -> str:
    lines = ["| target | req/s | user µs/req | system µs/req | RES/req | CAL/req | "
             "steal ms/round |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for target in dict.fromkeys(r.target for r in rounds):
        mine = [r for r in rounds if r.target == target]
        steals = [r.steal_ms for r in mine if r.steal_ms is not None]
        steal = f"{statistics.median(steals):.0f}" if steals else "-"
        lines.append(
            f"| {target} | {statistics.median(r.rps for r in mine):,.0f} "
            f"| {statistics.median(r.user_us for r in mine):.2f} "
            f"| {statistics.median(r.system_us for r in mine):.2f} "
            f"| {statistics.median(r.res for r in mine):.3f} "
            f"| {statistics.median(r.cal for r in mine):.3f} | {steal} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", action="append", type=Path, default=[],
                        help="a compiled build's directory (repeatable; default build/compiled)")
    parser.add_argument("--interpreted", action="store_true", help="also the source tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=bench.wrk_seconds, default=5)
    parser.add_argument("--connections", type=int, default=64)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    builds: list[Path] = args.build or [compiled.DEFAULT_DEST]
    for build in builds:
        if (problem := compiled.missing_build(build)) is not None:
            sys.stderr.write(f"wakeups: {problem}\n")
            return 2
    tools = bench.prepare_run()
    if tools is None:
        return 2
    wrk, nginx = tools
    tmp = Path(tempfile.mkdtemp(prefix="splitproxy-wakeups-"))
    children = bench.Children(tmp)
    rounds: list[Round] = []
    try:
        upstream = bench.start_nginx_upstream(children, nginx, tmp)
        targets: dict[str, int] = {}
        for i, build in enumerate(builds):
            name = f"splitproxy-{i}"
            targets[f"{name} ({build})"] = bench.start_splitproxy(
                children, tmp, upstream, name=name, env=compiled.run_env(build.resolve()))
        if args.interpreted:
            targets["splitproxy (source)"] = bench.start_splitproxy(
                children, tmp, upstream, name="splitproxy-source")
        targets["nginx-proxy"] = bench.start_nginx_proxy(children, nginx, tmp, upstream)
        groups = {name: proc.pid for name, proc in children.procs}
        pgids = dict(zip(targets, [pid for name, pid in groups.items() if name != "upstream"],
                         strict=True))
        for number in range(args.rounds):
            for target, port in targets.items():
                done = measure(wrk, target, port, pgids[target], args.connections,
                               args.duration)
                rounds.append(done)
                print(f"wakeups: round {number + 1}/{args.rounds} {target}: {done.rps:,.0f} "
                      f"req/s, RES {done.res:.3f}, CAL {done.cal:.3f} per request",
                      file=sys.stderr, flush=True)
    finally:
        children.stop_all()
    print(f"wakeups: wrk -t2 -c{args.connections} -d{args.duration}s, median of "
          f"{args.rounds} interleaved round(s), per request\n")
    print(markdown(rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
