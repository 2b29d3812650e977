"""The benchmarks' shared wrk plan (loadtests/bench.py): which warm-up runs they make, as argv,
without running wrk, and the durations they accept."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from loadtests import bench, bench_mirror, bench_tls

PORTS = {"splitproxy": 8001, "nginx-proxy": 8002}


@pytest.mark.parametrize("seconds", [0, 0.0])
def test_a_zero_warm_up_runs_nothing(seconds: float) -> None:
    # wrk refuses -d0s: `bench_mirror.py --warmup 0` used to fail on it.
    assert bench.warm_up_runs("wrk", PORTS, list(PORTS), 2, 64, seconds) == []


def test_a_warm_up_runs_wrk_once_per_target_in_order() -> None:
    runs = bench.warm_up_runs("/usr/bin/wrk", PORTS, ["nginx-proxy", "splitproxy"], 2, 1, 2.0)
    assert runs == [
        ("nginx-proxy", ["/usr/bin/wrk", "-t1", "-c1", "-d2s", "--latency",
                         "http://127.0.0.1:8002/"]),
        ("splitproxy", ["/usr/bin/wrk", "-t1", "-c1", "-d2s", "--latency",
                        "http://127.0.0.1:8001/"]),
    ]  # one thread: wrk wants a connection per thread


@pytest.mark.parametrize(("argv", "warmup"), [
    (["--warmup", "0"], 0.0),
    ([], 1.0),
])
def test_bench_mirror_takes_a_zero_warm_up(argv: list[str], warmup: float) -> None:
    assert bench_mirror.parse_args(argv).warmup == warmup


def test_bench_mirror_refuses_a_negative_warm_up(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_mirror.parse_args(["--warmup", "-1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--warmup" in err and "must be >= 0" in err


@pytest.mark.parametrize("parse", [bench.parse_args, bench_mirror.parse_args, bench_tls.parse_args],
                         ids=["bench", "bench_mirror", "bench_tls"])
@pytest.mark.parametrize("argv", [["--duration", "1.5"], ["--duration", "0"], ["--duration", "x"]])
def test_a_duration_wrk_cannot_run_is_refused_before_anything_starts(
        parse: Callable[[list[str]], argparse.Namespace], argv: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    # wrk takes whole seconds only and refuses -d0s, after the servers have started.
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    assert "--duration" in capsys.readouterr().err


@pytest.mark.parametrize("parse", [bench.parse_args, bench_mirror.parse_args, bench_tls.parse_args],
                         ids=["bench", "bench_mirror", "bench_tls"])
def test_whole_seconds_are_taken(parse: Callable[[list[str]], argparse.Namespace]) -> None:
    assert parse(["--duration", "3"]).duration == 3
