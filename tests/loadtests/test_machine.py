"""What the benchmark records about the machine (loadtests/machine.py): the host's steal time
per wrk round, and `--pin`, which gives splitproxy and nginx the same CPU placement."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtests import bench, machine

STAT = ("cpu  2381400 110597 481663 2756286 16099 0 169510 19723 0 0\n"
        "cpu0 1190700 55298 240831 1378143 8049 0 84755 9861 0 0\n"
        "cpu1 1190700 55299 240832 1378143 8050 0 84755 9862 0 0\n"
        "intr 1 2 3\n")
TICK = os.sysconf("SC_CLK_TCK")


def test_steal_is_the_eighth_column_of_each_cpus_line_in_ms(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    assert machine.stolen_ms(stat) == [9861 * 1000 / TICK, 9862 * 1000 / TICK]


@pytest.mark.parametrize("text", ["cpu  1 2 3 4 5 6 7 8\ncpu0 1 2 3 4 5 6 7\n",
                                  "intr 1 2 3 4 5 6 7 8 9\n", ""])
def test_no_steal_column_reads_as_unknown(tmp_path: Path, text: str) -> None:
    stat = tmp_path / "stat"
    stat.write_text(text)
    assert machine.stolen_ms(stat) is None


def test_an_unreadable_stat_file_reads_as_unknown(tmp_path: Path) -> None:
    assert machine.stolen_ms(tmp_path / "missing") is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux only")
def test_this_machine_reports_a_steal_counter_per_cpu_that_never_goes_back() -> None:
    first = machine.stolen_ms()
    second = machine.stolen_ms()
    assert first is not None and second is not None
    assert len(first) == len(second) >= 1
    stolen = machine.steal_between(first, second)
    assert stolen is not None and stolen >= 0


def test_an_intervals_steal_is_the_most_any_one_cpu_lost() -> None:
    # One 100 ms pause of the VM, seen by both busy vCPUs: 100 ms, not 200.
    assert machine.steal_between([100.0, 50.0], [200.0, 150.0]) == 100.0
    assert machine.steal_between([100.0, 50.0], [110.0, 150.0]) == 100.0
    assert machine.steal_between(None, [1.0]) is None
    assert machine.steal_between([1.0], None) is None
    assert machine.steal_between([1.0], [1.0, 2.0]) is None  # a CPU came or went


@pytest.mark.parametrize(("cpus", "proxy", "rest"), [
    ({0, 1}, {0}, {1}),
    ([3, 1, 2], {1}, {2, 3}),
])
def test_the_proxy_gets_the_lowest_cpu_alone(cpus: set[int], proxy: set[int],
                                             rest: set[int]) -> None:
    assert machine.pinned_layout(cpus) == machine.Layout(frozenset(proxy), frozenset(rest))


def test_one_cpu_cannot_be_split() -> None:
    with pytest.raises(ValueError, match="at least 2 CPUs"):
        machine.pinned_layout({0})


@pytest.mark.parametrize(("cpus", "cpu"), [({0}, 0), ({0, 1}, 1), ([3, 1, 2], 3)])
def test_shared_puts_every_process_on_the_highest_cpu(cpus: set[int], cpu: int) -> None:
    assert machine.shared_layout(cpus) == machine.Layout(frozenset({cpu}), frozenset({cpu}))


def test_shared_needs_a_cpu() -> None:
    with pytest.raises(ValueError, match="needs a CPU"):
        machine.shared_layout(set())


def test_pin_shared_gives_one_cpu_for_every_process() -> None:
    args = bench.parse_args(["--pin", "shared", "--variants", "splitproxy-nostats"])
    cpu = max(os.sched_getaffinity(0))
    assert args.layout == machine.Layout(frozenset({cpu}), frozenset({cpu}))
    assert bench.placement(args.layout) == f"pinned: every process on CPU {cpu}"


def test_no_cpus_means_no_binding() -> None:
    assert machine.pin_to(None) is None


def test_a_pinned_child_and_its_threads_run_only_on_the_given_cpu() -> None:
    cpu = min(os.sched_getaffinity(0))
    code = ("import os, threading\n"
            "seen = []\n"
            "t = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))\n"
            "t.start(); t.join()\n"
            "print(sorted(os.sched_getaffinity(0)), seen[0])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=True, preexec_fn=machine.pin_to(frozenset({cpu})))
    assert done.stdout.split() == [f"[{cpu}]", f"[{cpu}]"]


def test_pin_refuses_the_multi_worker_variants(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench.parse_args(["--pin"])  # the defaults include splitproxy-2w
    assert exited.value.code == 2
    assert "splitproxy-2w" in capsys.readouterr().err


def test_pin_with_one_worker_variants_gives_the_layout_of_this_machine(
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--pin", "--variants", "splitproxy-nostats"]
    if len(os.sched_getaffinity(0)) < 2:
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert "at least 2 CPUs" in capsys.readouterr().err
        return
    args = bench.parse_args(argv)
    assert args.layout == machine.pinned_layout()
    assert bench.placement(args.layout).startswith("pinned: each proxy on CPU ")
    assert bench.parse_args([]).layout is None


def test_the_table_shows_the_worst_rounds_steal() -> None:
    samples = [
        bench.Sample(target, 64, rnd, 1000.0 * rnd, 1.0, 2.0 * rnd, 5000, 0, steal)
        for target in bench.TARGETS
        for rnd, steal in ((1, 0.0), (2, 90.0), (3, None))
    ]
    rows = bench.summarize(samples, [64])
    assert {r["steal_ms"] for r in rows} == {90.0}
    table = bench.markdown(rows)
    assert "host steal (worst round, busiest vCPU)" in table.splitlines()[0]
    assert all(line.endswith("| 90 ms |") for line in table.splitlines()[2:])


def test_rounds_without_a_steal_reading_show_a_dash() -> None:
    samples = [bench.Sample(t, 1, 1, 100.0, 1.0, 2.0, 500, 0) for t in bench.TARGETS]
    assert all(line.endswith("| - |")
               for line in bench.markdown(bench.summarize(samples, [1])).splitlines()[2:])


def test_the_table_shows_each_targets_cpu_as_a_share_of_a_vcpu_and_a_request() -> None:
    samples = [bench.Sample(t, 1, rnd, 100.0, 1.0, 2.0, 500, 0, None, pct, per)
               for t in bench.TARGETS
               for rnd, pct, per in ((1, 40.0, 70.0), (2, 50.0, 75.0), (3, 99.0, 90.0))]
    rows = bench.summarize(samples, [1])
    assert {(r["cpu_pct"], r["cpu_us"]) for r in rows} == {(50.0, 75.0)}  # the medians
    table = bench.markdown(rows).splitlines()
    assert "| CPU (of one vCPU) | CPU a request |" in table[0]
    assert all(line.endswith("| 50% | 75 µs | - |") for line in table[2:])
    unread = [bench.Sample(t, 1, 1, 100.0, 1.0, 2.0, 500, 0) for t in bench.TARGETS]
    assert all(line.endswith("| - | - | - |")
               for line in bench.markdown(bench.summarize(unread, [1])).splitlines()[2:])


def test_a_process_groups_cpu_ticks_add_up_its_processes() -> None:
    """What the bench reads for a target: every process of the group it leads."""
    import os
    import signal
    import subprocess
    import sys

    burn = ("import time\nend = time.process_time() + 0.3\n"
            "while time.process_time() < end: pass\ntime.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c",
                              f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                              f"{burn!r}])"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while sum(machine.group_ticks(child.pid)) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)  # the grandchild burns 0.3 s of CPU, then sleeps
        assert sum(machine.group_ticks(child.pid)) >= 20  # ticks of 10 ms, while it lives
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the group: the grandchild too
        child.wait()
