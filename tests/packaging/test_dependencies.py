"""What splitproxy installs: tzdata, so time zones load where the system has none, and
constraints.txt, one pinned version of every dependency for make, CI and the image."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[2]
CONSTRAINTS = ROOT / "constraints.txt"

WINDOW_CONFIG = """\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
      canary: {endpoints: ["http://127.0.0.1:9002"]}
    weights: {stable: 100}
    rollout:
      steps: [{set_weight: 10}]
      window: {days: [mon], start: "09:00", end: "17:00", tz: Asia/Seoul}
"""

# Runs with the system's zone database out of reach; prints the zone the config loaded.
LOAD = """\
import sys, zoneinfo
assert zoneinfo.TZPATH == (sys.argv[2],), zoneinfo.TZPATH
if sys.argv[3] == "block-tzdata":
    sys.modules["tzdata"] = None  # as if the package were not installed
from splitproxy.config.models import ConfigError, load
try:
    print(load(sys.argv[1]).routes[0].rollout.window.tz)
except ConfigError as exc:
    print(exc)
"""


def _load_without_system_zones(tmp_path: Path, mode: str) -> str:
    config = tmp_path / "config.yaml"
    config.write_text(WINDOW_CONFIG)
    no_zones = tmp_path / "no-zones"
    no_zones.mkdir(exist_ok=True)
    # PYTHONTZPATH is where zoneinfo looks before the tzdata package; TZDIR is libc's.
    env = {**os.environ, "PYTHONTZPATH": str(no_zones), "TZDIR": str(no_zones)}
    result = subprocess.run([sys.executable, "-c", LOAD, str(config), str(no_zones), mode],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_time_zone_loads_without_the_systems_zone_database(tmp_path: Path) -> None:
    assert _load_without_system_zones(tmp_path, "with-tzdata") == "Asia/Seoul"


def test_without_tzdata_that_same_config_would_fail(tmp_path: Path) -> None:
    """The control: the system's zones really are out of reach in the test above."""
    out = _load_without_system_zones(tmp_path, "block-tzdata")
    assert "rollout.window.tz: unknown time zone 'Asia/Seoul'" in out


def test_tzdata_is_a_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "tzdata" in {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}


# ------------------------------------------------------------------------------ constraints


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!_-]+)", line)
        assert m, f"constraints.txt: {line!r} is not an exact pin name==version"
        name = canonicalize_name(m[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = m[2]
    return pins


def _closure(name: str, extras: frozenset[str]) -> set[str]:
    """Every distribution `name[extras]` needs on this platform, recursively."""
    needed: set[str] = set()
    todo = [(canonicalize_name(name), extras)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        current, wanted = todo.pop()
        if (current, wanted) in seen:
            continue
        seen.add((current, wanted))
        for text in importlib.metadata.distribution(current).requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(
                    req.marker.evaluate({"extra": extra}) for extra in wanted | {""}):
                continue
            dep = canonicalize_name(req.name)
            needed.add(dep)
            todo.append((dep, frozenset(req.extras)))
    return needed


def test_constraints_pin_exactly_the_dependencies_of_every_extra() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    needed = _closure("splitproxy", frozenset(extras))
    pins = _pins()
    assert "splitproxy" not in pins
    assert not needed - set(pins), f"not pinned (run `make constraints`): {needed - set(pins)}"
    assert not set(pins) - needed, f"pinned but not needed: {set(pins) - needed}"


def test_the_test_environment_is_the_pinned_one() -> None:
    """`make` installs with the constraints: what the tests run on is what is pinned."""
    drift = {name: (importlib.metadata.version(name), version)
             for name, version in _pins().items()
             if importlib.metadata.version(name) != version}
    assert not drift, f"installed != pinned (run `make`): {drift}"


def test_make_and_ci_install_with_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = [ln for ln in makefile.splitlines() if "pip install" in ln and "-e " in ln]
    assert installs and all("-c constraints.txt" in ln for ln in installs), installs
    stamp = next(ln for ln in makefile.splitlines() if ln.startswith("$(STAMP):"))
    assert "constraints.txt" in stamp  # a new pin reinstalls
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE)  # CI installs through make
