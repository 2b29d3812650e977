"""The guard's settings: new ones load, old ones are refused at their line with what to write
instead (never silently ignored)."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitproxy.config.models import ConfigError, load

HEAD = """\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
      canary: {endpoints: ["http://127.0.0.1:9002"]}
    weights: {stable: 90, canary: 10}
    analysis:
"""


def errors(tmp_path: Path, analysis: str) -> list[str]:
    path = tmp_path / "shop.yaml"
    path.write_text(HEAD + analysis)
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value.errors


@pytest.mark.parametrize(("line", "says"), [
    ("min_requests: 50", "verdicts need no minimum"),
    ("window: 60s", "each step is judged on all its traffic since the step began"),
    ("failure_limit: 2", "to make aborts rarer, lower analysis.alpha"),
    ("inconclusive_limit: 5", "write advance: on-timer"),
    ("compare_to_baseline: {error_rate_margin: 0.005}", "write compare_to_baseline.margin: 0.5"),
    ("compare_to_baseline: {latency_factor: 1.5}", "share of requests over each max_pNN_ms"),
])
def test_a_removed_setting_is_refused_at_its_line_saying_what_to_write(
    tmp_path: Path, line: str, says: str,
) -> None:
    [error] = errors(tmp_path, f"      max_error_rate: 0.01\n      {line}\n")
    assert error.startswith(f"{tmp_path / 'shop.yaml'}:9: routes[0].analysis.")
    assert says in error


def test_every_removed_setting_is_reported_at_once(tmp_path: Path) -> None:
    found = errors(tmp_path, "      interval: 10s\n      window: 60s\n      min_requests: 50\n"
                             "      failure_limit: 2\n      inconclusive_limit: 3\n")
    assert [e.split(": ")[1] for e in found] == [
        "routes[0].analysis.window", "routes[0].analysis.min_requests",
        "routes[0].analysis.failure_limit", "routes[0].analysis.inconclusive_limit"]


@pytest.mark.parametrize(("value", "says"), [
    ("0", "a limit of 0 can never pass"), ("1", "a limit of 1 can never fail"),
    ("1.5", "a limit of 1 can never fail")])
def test_an_error_rate_limit_must_be_able_to_pass_and_fail(
    tmp_path: Path, value: str, says: str,
) -> None:
    [error] = errors(tmp_path, f"      max_error_rate: {value}\n")
    assert ":8: routes[0].analysis.max_error_rate: " in error and says in error


def test_an_analysis_that_judges_nothing_is_refused(tmp_path: Path) -> None:
    [error] = errors(tmp_path, "      max_error_rate: null\n")
    assert "analysis judges nothing" in error


@pytest.mark.parametrize("line", ["alpha: 0", "alpha: 0.6", "beta: 0", "advance: sometimes",
                                  "compare_to_baseline: {margin: -1}"])
def test_bad_new_settings_are_refused(tmp_path: Path, line: str) -> None:
    assert errors(tmp_path, f"      {line}\n")


def test_the_new_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(HEAD + "      alpha: 0.001\n      beta: 0.1\n      advance: on-timer\n"
                           "      max_p90_ms: 250\n      compare_to_baseline: {margin: 0.2}\n")
    analysis = load(path).routes[0].analysis
    assert analysis is not None
    assert (analysis.alpha, analysis.beta, analysis.advance, analysis.interval) == (
        0.001, 0.1, "on-timer", 1.0)
    assert analysis.latency_limits() == (("p90", 0.25, 0.1),)
    assert analysis.compare_to_baseline is not None
    assert analysis.compare_to_baseline.margin == 0.2
