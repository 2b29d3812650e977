"""The demo as a user drives it: `splitproxy demo` in a terminal, then the banner's lines pasted
into another one — break the canary, see the abort in `status`, Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("splitproxy")  # what `make demo` runs


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout:g} s")


def _shell(line: str) -> subprocess.CompletedProcess[str]:
    """A banner line, as pasted into a shell in the directory `make demo` runs in."""
    return subprocess.run(line, shell=True, cwd=REPO, capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def running_demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "splitproxy"]
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([*command, "demo", "--free-ports"], cwd=REPO, stdout=o,
                                stderr=e)
    try:
        yield proc, out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_the_banner_s_line_breaks_the_canary_status_shows_the_abort_and_ctrl_c_stops(
    running_demo: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    proc, out, err = running_demo
    _wait_for(lambda: "Ctrl-C" in out.read_text() or proc.poll() is not None, 30, "banner")
    assert proc.poll() is None, err.read_text()
    lines = [line.strip() for line in out.read_text().splitlines()]
    [watch] = [line for line in lines if line.endswith(("status --watch",))
               or " status --watch --admin " in line]
    [breaks] = [line for line in lines if "_demo/fault?error_rate=" in line]
    status = watch.replace(" --watch", "")  # one screen of what --watch refreshes
    config = Path(next(line.split()[1] for line in lines if line.startswith("config ")))

    before = _shell(status)
    assert before.returncode == 0, before.stderr
    assert "demo   progressing" in before.stdout, before.stdout

    broke = _shell(breaks)
    assert broke.returncode == 0 and "error_rate 0.5" in broke.stdout, broke

    seen: list[str] = []

    def aborted() -> bool:
        result = _shell(status)
        seen.append(result.stdout)
        return "demo: aborted: guard: canary error rate" in result.stdout

    _wait_for(aborted, 90, "abort in `status`")
    screen = seen[-1]
    rows = {line.split()[-8]: line.split() for line in screen.splitlines()
            if line.split()[-8:-7] in (["stable"], ["canary"])}
    assert rows["stable"][-6] == "100" and rows["canary"][-6] == "0", screen  # EFFECTIVE
    reason = next(line for line in screen.splitlines() if "aborted: guard:" in line)
    assert "> 5%" in reason and "errors)" in reason and "n=" in reason, reason
    assert "WARNING splitproxy.rollout: rollout route=demo phase=" in err.read_text()

    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(20) == 0, err.read_text()
    assert "demo stopped" in err.read_text()
    assert not config.parent.exists()  # the next demo starts fresh
