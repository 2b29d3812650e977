"""The load-test harness lives in the repository's top-level `loadtests/` folder, which is not
part of the installed package: put the repository root on sys.path for these tests."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
