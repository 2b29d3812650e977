"""What the machine does to a benchmark run: the time its host took from it, and where its
processes run.

Steal. On a virtual machine the host can stop every vCPU at once; the guest sees nothing but a
jump of its clocks, and /proc/stat's `steal` column. On the 2-vCPU machines this project is
measured on, pauses of 60-100 ms come in clusters (README, "p99 spikes"). One pause in a
wrk round moves wrk's p99 far more than its length suggests: wrk 4 corrects for coordinated
omission, adding for each latency above twice the mean request interval one made-up sample
per interval it spans, so one 100 ms pause with 64 connections in flight adds about 3,000
samples spread up to 100 ms, and the p99 of a 3 s round becomes ~70 ms. Each sample of the
benchmark therefore records the steal time of its round, so a reader can tell a pause of the
host from a stall of the proxy.

Pinning. With one connection a request crosses four processes' wake-ups (wrk, proxy,
upstream, proxy, wrk); on these vCPUs a wake-up on the other CPU costs ~25 us more than on
the same one, so where the scheduler happens to put the three processes moves req/s by 2x
for either proxy. `--pin` puts the proxies alone on one CPU (all of them: the one not
measured idles) and the upstream and wrk on the others, the same for splitproxy and nginx,
so that they are compared on the same placement. It answers the one-connection question: at
64 connections and more, on two vCPUs, wrk and the upstream sharing one vCPU come close to
capping what either proxy can be given (the `upstream` row shows that ceiling).

`--pin shared` puts every process on one CPU instead. Then no wake-up crosses vCPUs and no
vCPU halts between the hops of a request, so a one-connection round measures what each proxy
spends per request (its CPU and its context switches) rather than how far the host is from
the sleeping vCPU; both proxies run about twice as fast as on the scheduler's placement here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
PROC_STAT = PROC / "stat"
STEAL_FIELD = 8  # `cpuN  user nice system idle iowait irq softirq steal ...`


def stolen_ms(stat: Path = PROC_STAT) -> list[float] | None:
    """The host's steal time of each CPU since boot, in ms (`cpu0`, `cpu1`, ...); None where
    there is none to read (not Linux, or a kernel without the column)."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    per_cpu = []
    for line in lines:
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
            continue
        if len(fields) <= STEAL_FIELD:
            return None
        per_cpu.append(int(fields[STEAL_FIELD]) * 1000.0 / tick)
    return per_cpu or None


def steal_between(before: list[float] | None, after: list[float] | None) -> float | None:
    """Steal time of an interval, in ms: the most any one CPU lost. A pause of the whole VM
    counts on every CPU that had work to run, so the sum over CPUs would read one pause as up
    to N times its length, and more on a busier target; the largest single CPU's share is
    close to how long the VM was stopped."""
    if before is None or after is None or len(before) != len(after):
        return None
    return max(b - a for a, b in zip(before, after, strict=True))


@dataclass(frozen=True, slots=True)
class Layout:
    """Where `--pin` runs each process: `proxy` holds the proxy under test (alone, unless it is
    the same set as `rest`: `--pin shared`); `rest` the upstream and wrk."""

    proxy: frozenset[int]
    rest: frozenset[int]


def pinned_layout(available: Iterable[int] | None = None) -> Layout:
    """The lowest CPU for the proxy, every other one for the rest. ValueError with one CPU."""
    cpus = sorted(os.sched_getaffinity(0) if available is None else available)
    if len(cpus) < 2:
        raise ValueError(f"--pin needs at least 2 CPUs, this process may use {len(cpus)}")
    return Layout(proxy=frozenset(cpus[:1]), rest=frozenset(cpus[1:]))


def shared_layout(available: Iterable[int] | None = None) -> Layout:
    """Every process on the highest CPU (`--pin shared`). ValueError with none."""
    cpus = sorted(os.sched_getaffinity(0) if available is None else available)
    if not cpus:
        raise ValueError("--pin shared needs a CPU this process may use")
    return Layout(proxy=frozenset(cpus[-1:]), rest=frozenset(cpus[-1:]))


def pin_to(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A `preexec_fn` that binds the child (and every thread and process it makes) to `cpus`;
    None for no binding."""
    if cpus is None:
        return None
    chosen = set(cpus)

    def pin() -> None:
        os.sched_setaffinity(0, chosen)

    return pin


def cpu_ticks(stat: str) -> tuple[int, int]:
    """utime and stime (clock ticks) from a /proc/PID/stat line (the name may hold spaces)."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def group_ticks(pgid: int) -> tuple[int, int]:
    """User and system ticks of every live process of a process group."""
    user = system = 0
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            os_pgid = os.getpgid(int(entry.name))
            if os_pgid != pgid:
                continue
            u, s = cpu_ticks((entry / "stat").read_text())
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        user += u
        system += s
    return user, system
