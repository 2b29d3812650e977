"""setup.py: the compiled data plane in the wheel only when SPLITPROXY_MYPYC=1 asks for it.

The compiled build itself runs in test_dockerfile.py (the image's builder, replayed); here, that
every other build stays as it was: pure Python, no mypy, no compiler.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def setup_py() -> dict[str, Any]:
    """setup.py's functions, without running setup() (it runs only as __main__)."""
    return runpy.run_path(str(ROOT / "setup.py"), run_name="splitproxy_setup")


@pytest.mark.parametrize("value", ["", "0"])
@pytest.mark.parametrize("commands", [["bdist_wheel"], ["editable_wheel"], ["egg_info"]])
def test_without_the_variable_nothing_is_compiled(setup_py: dict[str, Any], value: str,
                                                  commands: list[str]) -> None:
    assert setup_py["ext_modules"]({"SPLITPROXY_MYPYC": value}, commands) == []
    assert setup_py["ext_modules"]({}, commands) == []


@pytest.mark.parametrize("commands", [["egg_info"], ["dist_info", "--output-dir", "x"], ["sdist"]])
def test_reading_the_metadata_runs_no_mypyc_even_with_the_variable(
    setup_py: dict[str, Any], commands: list[str],
) -> None:
    """pip asks for the metadata before it builds: mypyc runs once, for the wheel."""
    assert setup_py["ext_modules"]({"SPLITPROXY_MYPYC": "1"}, commands) == []


@pytest.mark.parametrize("command", ["editable_wheel", "develop"])
def test_an_editable_compiled_install_is_refused_with_the_reason(
    setup_py: dict[str, Any], command: str,
) -> None:
    with pytest.raises(SystemExit, match="cannot be installed editable .* `make compiled`"):
        setup_py["ext_modules"]({"SPLITPROXY_MYPYC": "1"}, [command])


def test_a_value_other_than_0_or_1_is_refused(setup_py: dict[str, Any]) -> None:
    with pytest.raises(SystemExit, match="SPLITPROXY_MYPYC='yes': use 1"):
        setup_py["ext_modules"]({"SPLITPROXY_MYPYC": "yes"}, ["bdist_wheel"])


def test_the_plain_wheel_is_pure_python(tmp_path: Path) -> None:
    """`pip wheel .` without the variable, as before setup.py existed: a py3-none-any wheel
    with no extension module in it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "splitproxy", src / "splitproxy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "SPLITPROXY_MYPYC"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), "."],
        cwd=src, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("splitproxy-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "splitproxy/dataplane/hotmodules.py" in names
    assert [n for n in names if n.endswith((".so", ".c", ".pyd"))] == []
    assert not (src / "build" / "mypyc").exists()
