"""The compiled data plane: the hot modules built with mypyc, in a copy of the package.

    python -m loadtests.compiled [--dest build/compiled]   # build, then prove what was built
    python -m loadtests.compiled --check                   # only: is there a C toolchain?

mypyc drops its `.so` files next to the modules it compiles, and an extension module wins the
import over the `.py` beside it: built in the source tree, an edited module would go on running
its old compiled code. So the whole `splitproxy/` package is copied to `<dest>/splitproxy/` and
compiled there (with the repository's mypy configuration); `PYTHONPATH=<dest>` runs it, and the
source tree never holds a `.so`. `make compiled` rebuilds whenever a source file changes.

After the build, a child Python with `PYTHONPATH=<dest>` imports every module of HOT_MODULES and
the build fails unless each one came from an extension module under `<dest>`. The list and the
mypyc settings live in `splitproxy.dataplane.hotmodules`, shared with the image's wheel build
(setup.py, SPLITPROXY_MYPYC=1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from splitproxy.dataplane.hotmodules import (
    DEBUG_LEVEL,
    HOT_MODULES,
    MYPY_ARGS,
    OPT_LEVEL,
    source_path,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO / "build" / "compiled"
NO_TOOLCHAIN = 3  # the exit code when there is no C compiler or no Python.h

def run_env(dest: Path = DEFAULT_DEST) -> dict[str, str]:
    """The environment that runs the build: splitproxy from `dest`, loadtests and tests from
    the repository; PYTHONSAFEPATH keeps a child's cwd (the repository, for `python -m`) off
    the front of sys.path, where its source would shadow the build."""
    return {"PYTHONPATH": os.pathsep.join([str(dest), str(REPO)]), "PYTHONSAFEPATH": "1",
            "SPLITPROXY_EXPECT_COMPILED": "1"}


def missing_build(dest: Path = DEFAULT_DEST) -> str | None:
    """Why the build in `dest` cannot be run (None: it can)."""
    if (dest / ".built").is_file():
        return None
    return f"no compiled build in {dest}: run `make compiled` first"


def toolchain_problem() -> str | None:
    """What is missing to compile C extensions for this Python, with how to install it;
    None when a compiler and Python.h are there."""
    # setuptools compiles with $CC when set, else with the compiler Python was built with.
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    missing = []
    if shutil.which(cc) is None:
        missing.append(f"a C compiler ({cc})")
    if not headers.is_file():
        missing.append(f"Python's headers ({headers})")
    if not missing:
        return None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (f"cannot build the compiled data plane, missing {' and '.join(missing)}.\n"
            f"  Debian/Ubuntu: apt-get install gcc python{version}-dev (or python3-dev)\n"
            "  pyenv: a pyenv-built Python has its headers; install gcc (and rebuild the\n"
            "  Python with `pyenv install --force` if its include/ directory is empty)")


def copy_package(dest: Path) -> None:
    """A fresh copy of `splitproxy/` (no caches, no stray extension modules) and of the mypy
    configuration, and a link to `config/`; mypyc's own build directory and cache in `dest`
    are kept, for speed."""
    target = dest / "splitproxy"
    if target.exists():
        shutil.rmtree(target)
    for stale in dest.glob("*__mypyc*.so"):
        stale.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "splitproxy", target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    # The data the package finds beside itself (the demo's config/demo.yaml), not copied.
    config = dest / "config"
    if not config.is_symlink():
        config.symlink_to(REPO / "config", target_is_directory=True)


def compile_hot_modules(dest: Path) -> None:
    """mypyc on HOT_MODULES, run in `dest`: its .so files and build/ stay there."""
    mypyc = Path(sys.executable).with_name("mypyc")
    argv = [str(mypyc) if mypyc.exists() else "mypyc", *MYPY_ARGS, *map(source_path, HOT_MODULES)]
    env = {**os.environ, "PYTHONPATH": str(dest), "PYTHONSAFEPATH": "1",
           "MYPYC_OPT_LEVEL": OPT_LEVEL, "MYPYC_DEBUG_LEVEL": DEBUG_LEVEL}
    done = subprocess.run(argv, cwd=dest, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"compiled: mypyc failed ({done.returncode}): {' '.join(argv)}")


_PROBE = ("import importlib, json, sys\n"
          "print(json.dumps({m: importlib.import_module(m).__file__ for m in sys.argv[1:]}))")


def loaded_from(dest: Path, modules: tuple[str, ...] = HOT_MODULES) -> dict[str, str]:
    """Where a child Python with `PYTHONPATH=dest` finds each module."""
    env = {**os.environ, **run_env(dest)}
    done = subprocess.run([sys.executable, "-c", _PROBE, *modules], cwd=dest, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise SystemExit(f"compiled: importing the build failed:\n{done.stderr}")
    files: dict[str, str] = json.loads(done.stdout)
    return files


def not_compiled(dest: Path, files: dict[str, str]) -> list[str]:
    """One line per module not loaded from an extension module under `dest`."""
    root = dest.resolve()
    return [f"{module}: {path}" for module, path in files.items()
            if not path.endswith(".so") or not Path(path).resolve().is_relative_to(root)]


def build(dest: Path) -> None:
    """Copy, compile, prove; `dest/.built` (what `missing_build` looks for, and make's
    target) exists only after a build that passed, and lists where each module came from."""
    start = time.monotonic()
    (dest / ".built").unlink(missing_ok=True)
    copy_package(dest)
    compile_hot_modules(dest)
    files = loaded_from(dest)
    wrong = not_compiled(dest, files)
    if wrong:
        raise SystemExit("compiled: these modules did not load compiled:\n  " + "\n  ".join(wrong))
    (dest / ".built").write_text(json.dumps(files, indent=2) + "\n")
    print(f"compiled: {len(HOT_MODULES)} modules built with mypyc in {dest} "
          f"({time.monotonic() - start:.0f} s); run with PYTHONPATH={dest}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                   help="where the copy is built (build/compiled)")
    p.add_argument("--check", action="store_true",
                   help=f"only check for a C compiler and Python.h (exit {NO_TOOLCHAIN} if not)")
    opts = p.parse_args(argv)
    problem = toolchain_problem()
    if problem is not None:
        print(f"compiled: {problem}", file=sys.stderr)
        return NO_TOOLCHAIN
    if not opts.check:
        build(opts.dest.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
