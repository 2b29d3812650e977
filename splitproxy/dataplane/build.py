"""Which data plane runs: the hot modules compiled with mypyc, or the Python source.

The compiled build is a copy of the package with extension modules in it (`make compiled`,
run with `PYTHONPATH=build/compiled`), or the wheel setup.py builds with SPLITPROXY_MYPYC=1,
which the container image installs; the source tree never holds one. The exchange module
stands for the whole set (splitproxy/dataplane/hotmodules.py): each build compiles all of the
hot modules or fails.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from splitproxy.dataplane.http import exchange


def compiled() -> bool:
    """Whether the hot modules run compiled (exchange was loaded from an extension module)."""
    origin = exchange.__file__ or ""
    return any(origin.endswith(suffix) for suffix in EXTENSION_SUFFIXES)


def describe() -> str:
    """One phrase for the startup log line."""
    if compiled():
        return f"compiled with mypyc (from {Path(exchange.__file__ or '').parents[3]})"
    return "interpreted (Python source; `make compiled` builds the compiled one)"
