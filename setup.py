"""The wheel, optionally with the compiled data plane (pyproject.toml holds everything else).

    pip wheel .                                                    # pure Python, as always
    SPLITPROXY_MYPYC=1 pip wheel --no-build-isolation --constraint constraints.txt .

Without SPLITPROXY_MYPYC=1 this file adds nothing: `pip install -e .` and the plain wheel are
pure Python and need no compiler. With it, the wheel also holds the hot modules
(splitproxy/dataplane/hotmodules.py) compiled by mypyc, as `make compiled` builds them; that
needs a C compiler, Python's headers and, in the build environment, mypy, the stubs and the
runtime dependencies at the versions of constraints.txt (mypyc type-checks with the
repository's mypy configuration, pydantic's plugin included): hence --no-build-isolation after
installing them, as the Dockerfile's builder does. The result is a platform wheel
(cp311-cp311-linux_x86_64), its `.py` files kept beside the extension modules.
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from setuptools import setup

HERE = Path(__file__).resolve().parent
MYPYC_VARIABLE = "SPLITPROXY_MYPYC"

# The setup commands that compile. The others (egg_info and dist_info, which pip runs to read
# the metadata first; sdist) leave mypyc alone: run at each of them it would type-check and
# generate the C again for nothing.
BUILDS = {"bdist_wheel", "build", "build_ext", "install"}
# An editable install would build the extension modules into the source tree, where a `.so`
# beside an edited `.py` wins the import and runs the old code (see loadtests/compiled.py).
EDITABLE = {"editable_wheel", "develop"}


def wants_mypyc(environ: Mapping[str, str]) -> bool:
    """SPLITPROXY_MYPYC=1 asks for the compiled data plane; unset, empty or 0 does not."""
    value = environ.get(MYPYC_VARIABLE, "")
    if value not in ("", "0", "1"):
        raise SystemExit(f"setup.py: {MYPYC_VARIABLE}={value!r}: use 1 (compile) or 0")
    return value == "1"


def ext_modules(environ: Mapping[str, str], commands: list[str]) -> list[Any]:
    """The extension modules for these setup commands: none unless SPLITPROXY_MYPYC=1 and
    one of them builds."""
    if not wants_mypyc(environ):
        return []
    if EDITABLE.intersection(commands):
        raise SystemExit(f"setup.py: {MYPYC_VARIABLE}=1 cannot be installed editable (the "
                         "compiled modules would shadow the sources): build a wheel, or use "
                         "`make compiled`")
    if not BUILDS.intersection(commands):
        return []
    from mypyc.build import mypycify  # only here: a pure build needs no mypy

    # Run by path, not imported: splitproxy's dependencies need not be importable here.
    hot = runpy.run_path(str(HERE / "splitproxy" / "dataplane" / "hotmodules.py"))
    paths = [hot["source_path"](module) for module in hot["HOT_MODULES"]]
    # Relative paths, from the project directory (pip builds in it): mypy finds the package
    # there, and the C it writes under build/mypyc names the modules as `make compiled` does.
    os.chdir(HERE)
    return mypycify([*hot["MYPY_ARGS"], *paths], opt_level=hot["OPT_LEVEL"],
                    debug_level=hot["DEBUG_LEVEL"], target_dir="build/mypyc")


if __name__ == "__main__":  # how setuptools' build backend runs this file
    setup(ext_modules=ext_modules(os.environ, sys.argv[1:]))
