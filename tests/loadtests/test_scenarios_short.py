"""The short load-test scenarios CI runs, so the harness itself cannot rot.

Each scenario runs as a subprocess (`python -m loadtests.scenarios NAME --short`): locust
monkey-patches the standard library with gevent on import, which must not happen inside the
test process. The subprocess gets its own process group, so a hung run is ended with
everything it started. Each takes 15-35 s; deselect them with `-m "not slow"`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 55.0  # a short scenario must finish well within this (it aims at < 40 s)
MISSING = [m for m in ("locust", "matplotlib") if importlib.util.find_spec(m) is None]
REQUIRED = os.environ.get("SPLITPROXY_REQUIRE_SERVICES") == "1"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(RUN_TIMEOUT + 20),
    pytest.mark.skipif(
        bool(MISSING) and not REQUIRED,
        reason=f"needs the `load` extra ({', '.join(MISSING)} missing): pip install -e '.[load]'",
    ),
]


def _kill_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def run_scenario(name: str, report_dir: Path) -> tuple[int, str]:
    argv = [sys.executable, "-m", "loadtests.scenarios", name, "--short",
            "--report-dir", str(report_dir)]
    proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGTERM)  # the runner stops its children on SIGTERM
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"{name} --short did not finish within {RUN_TIMEOUT:.0f}s:\n{out}")
    finally:
        _kill_group(proc, signal.SIGKILL)  # whatever the run left behind in its group
    return proc.returncode, out


# In `make test`: the harness proving the split, and the headline (a bad canary reverted).
# The other scenarios' behaviour is tested in tests/rollout without locust (blue/green,
# pre_switch, the guard's quiet on a healthy canary); they run at full length with
# `make loadtest`, which keeps `make test` within its 10 minutes on 2 cores.
@pytest.mark.parametrize("name", ["steady-split", "bad-canary"])
def test_short_scenario_meets_every_expectation(name: str, tmp_path: Path) -> None:
    code, out = run_scenario(name, tmp_path)
    assert code == 0, f"{name} --short exited {code}:\n{out}"
    report = json.loads((tmp_path / f"{name}.json").read_text())
    assert report["passed"] is True
    assert report["expectations"] and all(e["ok"] for e in report["expectations"])
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
