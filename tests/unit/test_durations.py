"""Durations with several parts (`1m30s`, `1h30m`, `2m5s500ms`): what they mean, and what is
refused with a message that says what to write."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitproxy.config.models import ConfigError, load
from splitproxy.config.units import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1m30s", 90.0),
        ("1h30m", 5400.0),
        ("2m5s500ms", 125.5),
        ("1h1s", 3601.0),
        ("1h0m0s", 3600.0),
        ("1m 30s", 90.0),  # a space between parts reads fine
        ("1M30S", 90.0),  # units are case-insensitive, as single-part ones always were
        ("1.5m30s", 120.0),
        ("0m0.25s", 0.25),
        ("5ms", 0.005),  # `ms`, never `m` then `s`
        ("1m5ms", 60.005),
        ("50us", 0.00005),  # microseconds: `performance.busy_poll`
        ("1ms500us", 0.0015),
        ("1s5us", 1.000005),
    ],
)
def test_durations_with_several_parts_add_up(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1s1m", "30s1h", "500ms1s", "1m1m", "1s1s", "1m30s10s",
                                  "5us1ms"])
def test_units_must_go_largest_first_each_once(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == (f"{text!r}: write the units largest first, each once "
                               "(h, m, s, ms, us: 1h30m, 2m5s500ms)")


@pytest.mark.parametrize(
    "text",
    ["1m30", "30 1m", "1m-30s", "1m+30s", "1m30s garbage", "1m,30s", "m30s", "1d2h", "1e3s",
     "9" * 400 + "s"],
)
def test_a_part_without_a_unit_or_with_junk_is_no_duration(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == f"expected a duration like 500ms, 2s or 1m, got {text!r}"


def test_a_negative_duration_with_parts_is_refused_as_negative() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("-1m30s")
    assert str(info.value) == "duration must be >= 0, got '-1m30s'"


def test_a_pause_of_1m30s_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("""\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
      canary: {endpoints: ["http://127.0.0.1:9002"]}
    weights: {stable: 100}
    rollout:
      steps:
        - set_weight: 10
        - pause: 1m30s
        - pause: {duration: 1h30m}
timeouts: {drain: 2m5s500ms}
""")
    config = load(path)
    steps = config.routes[0].rollout.steps if config.routes[0].rollout else ()
    assert [s.pause.duration for s in steps if s.pause] == [90.0, 5400.0]
    assert config.timeouts.drain == pytest.approx(125.5)


def test_units_out_of_order_name_the_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("""\
routes:
  - name: shop
    versions: {stable: {endpoints: ["http://127.0.0.1:9001"]}}
    weights: {stable: 1}
timeouts:
  idle: 30s1m
""")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.errors == [
        f"{path}:6: timeouts.idle: '30s1m': write the units largest first, each once "
        "(h, m, s, ms, us: 1h30m, 2m5s500ms)"
    ]
