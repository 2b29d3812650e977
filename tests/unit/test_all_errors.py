"""Every error of a config file in one run: cross-field rules (weights against versions,
unique route names, baseline and canary names, ...) are judged even when other fields of the
same model failed, and an error that two passes find is printed once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from splitproxy.config.models import ConfigError, load

ROOT = Path(__file__).parents[2]

# Five different mistakes; before `crossfield.recheck`, `check` showed three of them, then
# one more per fix.
FIVE_MISTAKES = """\
listen: 127.0.0.1:8080
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
      canary: {endpoints: ["http://127.0.0.1:9002"]}
    weights: {stable: 90, canry: 10}
    analysis:
      baseline: stabel
  - name: shop
    versions:
      stable: {endpoints: ["ftp://127.0.0.1:9003"]}
    weights: {stable: 1}
timeouts:
  connect: 2 parsecs
"""

FIVE_ERRORS = [
    "7: routes[0].weights.canry: unknown version 'canry' (versions: stable, canary)",
    "9: routes[0].analysis.baseline: unknown version 'stabel' (stable, canary)",
    "10: routes[1].name: duplicate route name (also routes[0])",
    "12: routes[1].versions.stable.endpoints[0]: "
    "expected an endpoint like http://127.0.0.1:9001, got 'ftp://127.0.0.1:9003'",
    "15: timeouts.connect: expected a duration like 500ms, 2s or 1m, got '2 parsecs'",
]


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    prefix = f"{path}:"
    assert all(e.startswith(prefix) for e in info.value.errors), info.value.errors
    return [e.removeprefix(prefix) for e in info.value.errors]


def test_splitproxy_check_reports_five_mistakes_in_one_run(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(FIVE_MISTAKES)
    result = subprocess.run([sys.executable, "-m", "splitproxy", "check", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"{path}:{e}" for e in FIVE_ERRORS]


# (what is wrong, the file, its errors without the file name)
CASES: list[tuple[str, str, list[str]]] = [
    ("unknown weight key beside a bad endpoint of the same route", """\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001/path"]}
    weights: {stable: 1, canary: 1}
""", ["4: routes[0].versions.stable.endpoints[0]: endpoint "
      "'http://127.0.0.1:9001/path' must not have a path or query",
      "5: routes[0].weights.canary: unknown version 'canary' (versions: stable)"]),
    ("unknown baseline and canary beside a bad weight", """\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
      canary: {endpoints: ["http://127.0.0.1:9002"]}
    weights: {stable: -1, canary: 1}
    analysis: {baseline: old}
    rollout: {canary: new}
""", ["6: routes[0].weights.stable: must be >= 0",
      "7: routes[0].analysis.baseline: unknown version 'old' (stable, canary)",
      "8: routes[0].rollout.canary: unknown version 'new' (stable, canary)"]),
    ("blue-green without active, with steps, beside a bad header name", """\
routes:
  - name: shop
    strategy: blue-green
    versions:
      blue: {endpoints: ["http://127.0.0.1:9001"]}
      green: {endpoints: ["http://127.0.0.1:9002"]}
    preview_header: "a b"
    rollout:
      steps: [{set_weight: 10}]
""", ["2: routes[0].active: required for strategy blue-green",
      "7: routes[0].preview_header: 'a b' is not a valid HTTP header or cookie name",
      "8: routes[0].rollout: blue-green switches by `active`, not steps "
      "(only `revision` and `webhooks` apply)"]),
    ("a rollout with one version, a step doing two things and a bad weight", """\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
    weights: {stable: 1}
    rollout:
      steps:
        - {set_weight: 150, pause: 10s}
        - {set_weight: 10}
""", ["6: routes[0].rollout: needs at least two versions",
      # On one line, pydantic's errors come first, then the cross-field ones.
      "8: routes[0].rollout.steps[0].set_weight: must be <= 100",
      "8: routes[0].rollout.steps[0]: a step is one of `set_weight: N`, `pause: ...`, "
      "`set_header_route: {...}` or `set_mirror: {...}`"]),
    ("an analysis that judges nothing and has a bad alpha", """\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
      canary: {endpoints: ["http://127.0.0.1:9002"]}
    weights: {stable: 1}
    analysis: {alpha: 2, max_error_rate: null}
""", ["7: routes[0].analysis.alpha: must be <= 0.5",
      "7: routes[0].analysis: analysis judges nothing: set max_error_rate, a max_pNN_ms, "
      "compare_to_baseline or metrics, or remove analysis"]),
    ("admin on the proxy's (default) address beside a missing route field", """\
admin: {listen: 127.0.0.1:8080}
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
""", ["1: admin.listen: same address as listen (127.0.0.1:8080)",
      "3: routes[0].weights: required"]),
    ("a duplicate YAML key does not stop the validation", """\
routes:
  - name: shop
    name: shop2
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
    weights: {stable: 0}
""", ["3: duplicate key 'name'",
      "6: routes[0].weights: total weight must be > 0"]),
]


@pytest.mark.parametrize(("name", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_cross_field_errors_come_with_the_others(
    tmp_path: Path, name: str, text: str, expected: list[str]
) -> None:
    assert errors_of(tmp_path, text) == expected


def test_an_error_both_passes_find_is_printed_once(tmp_path: Path) -> None:
    # The versions validate, so pydantic's own validator reports the unknown key as well as
    # the recheck (the bad duration makes the whole file fail).
    text = """\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
    weights: {stable: 1, canary: 1}
timeouts: {idle: soon}
"""
    assert errors_of(tmp_path, text) == [
        "5: routes[0].weights.canary: unknown version 'canary' (versions: stable)",
        "6: timeouts.idle: expected a duration like 500ms, 2s or 1m, got 'soon'",
    ]


def test_a_valid_file_is_not_rechecked_into_errors() -> None:
    for example in sorted((ROOT / "config").glob("*.yaml")):
        load(example)
