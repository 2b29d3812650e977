"""`make demo` installs only what running needs; `make test` adds the test and load extras.
Read from `make -n` (what make would run, on a venv that does not exist yet), so the test
follows the Makefile whatever its stamps are called."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _dry_run(target: str, tmp_path: Path) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "fresh-venv"  # never created: -n runs nothing
    result = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=REPO,
                            capture_output=True, text=True, timeout=30, check=True)
    return [line for line in result.stdout.splitlines() if " pip install " in line
            and "--upgrade pip" not in line]


def test_make_demo_installs_the_package_without_extras(tmp_path: Path) -> None:
    [install] = _dry_run("demo", tmp_path)
    words = install.split()
    assert words[words.index("-e") + 1] == ".", install  # the package itself, no [extras]
    assert not any("[" in word for word in words), install


def test_make_test_installs_the_test_extras(tmp_path: Path) -> None:
    installs = _dry_run("test", tmp_path)
    assert any("[test" in line for line in installs), installs


def test_the_compiled_build_depends_on_every_source_file(tmp_path: Path) -> None:
    """An edit anywhere in the package rebuilds build/compiled: never stale compiled code."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(["make", "-pn", "compiled", f"VENV={tmp_path / 'venv'}"], cwd=REPO,
                            capture_output=True, text=True, timeout=30, check=True)
    [rule] = [line for line in result.stdout.splitlines()
              if line.startswith("build/compiled/.built:")]
    prerequisites = set(rule.split(":", 1)[1].split())
    sources = {str(p.relative_to(REPO)) for p in (REPO / "splitproxy").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources <= prerequisites, sorted(sources - prerequisites)
    assert "loadtests/compiled.py" in prerequisites


def test_make_test_runs_the_compiled_subset_against_the_build(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(["make", "-n", "test-compiled", f"VENV={tmp_path / 'venv'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
    [run] = [line for line in result.stdout.splitlines() if "SPLITPROXY_EXPECT_COMPILED=1" in line]
    assert "build/compiled" in run and "PYTHONSAFEPATH=1" in run, run
    assert "tests/packaging/test_compiled.py" in result.stdout
