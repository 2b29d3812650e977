"""The compiled data plane (`make compiled`, loadtests/compiled.py) and which one a run uses.

`make test` runs this file twice: in the ordinary run every hot module must come from its `.py`
in the source tree; in the compiled run (SPLITPROXY_EXPECT_COMPILED=1, PYTHONPATH=build/compiled)
every one must come from an extension module of the build, so a compiled run that silently ran
the Python source fails here.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from loadtests import compiled
from splitproxy.dataplane import build
from splitproxy.dataplane.hotmodules import HOT_MODULES, source_path
from tests.support.proxy import proxied

REPO = Path(__file__).resolve().parents[2]
EXPECT_COMPILED = os.environ.get("SPLITPROXY_EXPECT_COMPILED") == "1"


def _is_extension(path: str) -> bool:
    return any(path.endswith(suffix) for suffix in EXTENSION_SUFFIXES)


@pytest.mark.parametrize("module", HOT_MODULES)
def test_each_hot_module_is_loaded_as_this_run_expects(module: str) -> None:
    path = importlib.import_module(module).__file__
    assert path is not None
    if EXPECT_COMPILED:
        assert _is_extension(path), f"{module} ran interpreted in a compiled run: {path}"
        assert not Path(path).resolve().is_relative_to(REPO / "splitproxy"), path
    else:
        assert Path(path).resolve() == REPO / source_path(module)


def test_the_hot_module_list_names_existing_sources_once() -> None:
    assert len(set(HOT_MODULES)) == len(HOT_MODULES)
    for module in HOT_MODULES:
        assert (REPO / source_path(module)).is_file(), module


def test_the_source_tree_holds_no_extension_module() -> None:
    """A `.so` beside a `.py` wins the import: an edit would run the old compiled code."""
    assert [p for p in (REPO / "splitproxy").rglob("*") if _is_extension(p.name)] == []


def test_the_startup_description_says_which_data_plane_runs() -> None:
    assert build.compiled() is EXPECT_COMPILED
    described = build.describe()
    assert described.startswith("compiled with mypyc" if EXPECT_COMPILED else "interpreted")


def test_a_child_python_started_in_the_repository_runs_the_same_data_plane() -> None:
    """What the tests' subprocesses (`python -m splitproxy` in the repository) get."""
    code = "from splitproxy.dataplane import build; print(int(build.compiled()))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == str(int(EXPECT_COMPILED))


async def test_the_proxy_logs_which_data_plane_runs_once_when_listening(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="splitproxy.dataplane.server")
    async with proxied():
        lines = [r.getMessage() for r in caplog.records
                 if r.getMessage().startswith("data plane: ")]
    assert lines == [f"data plane: {build.describe()}"]


def test_the_build_check_names_what_to_install_without_a_compiler(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert compiled.main(["--check"]) == compiled.NO_TOOLCHAIN
    err = capsys.readouterr().err
    assert "missing a C compiler (no-such-compiler-here)" in err
    assert "apt-get install gcc python3" in err


def test_a_module_loaded_from_source_or_elsewhere_fails_the_build_check(tmp_path: Path) -> None:
    dest = tmp_path / "compiled"
    inside = dest / "splitproxy" / "dataplane" / "stats.cpython-311-x86_64-linux-gnu.so"
    files = {"a": str(inside), "b": str(dest / "splitproxy" / "routing" / "choose.py"),
             "c": str(REPO / "splitproxy" / "x.cpython-311-x86_64-linux-gnu.so")}
    assert [line.split(":")[0] for line in compiled.not_compiled(dest, files)] == ["b", "c"]
