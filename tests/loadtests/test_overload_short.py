"""`loadtests.overload --short` (about 12 s): past `limits.max_connections` the proxy sheds
(503 with Retry-After) instead of letting memory and latency grow with the load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def test_overload_is_shed_with_flat_memory_and_latency(tmp_path: Path) -> None:
    out_file = tmp_path / "overload.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtests.overload", "--short", "--json", str(out_file)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=75)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the run left behind in its group
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out
    steps = json.loads(out_file.read_text())["steps"]
    under, *over = steps  # half the cap, then 2x and 4x the cap
    assert under["shed_per_s"] == 0 and under["served_per_s"] > 0
    for step in over:
        assert step["shed_per_s"] > 0, step
        assert step["errors"] == 0, step
        assert step["proxy_rss_mb"] < under["proxy_rss_mb"] + 40, (under, step)
        # The admitted requests do not queue up behind the excess: no latency that grows
        # with the offered load (4x here; with no cap every client would wait its turn).
        assert step["served_p50_ms"] < 4 * under["served_p50_ms"] + 100, (under, step)
