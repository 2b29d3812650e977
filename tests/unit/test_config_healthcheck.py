"""`health_check` on a version or a route: what loads, the route's as the default, and what is
refused with the file, the line and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitproxy.config.models import ConfigError, load
from splitproxy.dataplane.http.probe import checks_of
from splitproxy.routing.table import Endpoint


def write(tmp_path: Path, route_check: str, version_check: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
routes:
  - name: shop
    versions:
      stable:
        endpoints: ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
      canary:
        endpoints: ["http://127.0.0.1:9003"]
{version_check}
    weights: {{stable: 9, canary: 1}}
{route_check}
""")
    return path


def test_version_check_overrides_the_route_default(tmp_path: Path) -> None:
    config = load(write(
        tmp_path,
        "    health_check: {path: /ready, interval: 2s, timeout: 500ms}",
        "        health_check: {path: /live, interval: 1s, timeout: 1s, healthy_threshold: 3,"
        " unhealthy_threshold: 1, expect_status: [200, 204]}",
    ))
    checks = checks_of(config)
    assert {ep.port: c.path for ep, c in checks.items()} == {
        9001: "/ready", 9002: "/ready", 9003: "/live"}
    canary = checks[Endpoint("127.0.0.1", 9003)]
    assert (canary.interval, canary.timeout, canary.healthy_threshold,
            canary.unhealthy_threshold, canary.expect_status) == (1.0, 1.0, 3, 1, (200, 204))
    stable = checks[Endpoint("127.0.0.1", 9001)]
    assert (stable.interval, stable.timeout, stable.healthy_threshold,
            stable.unhealthy_threshold, stable.expect_status) == (2.0, 0.5, 2, 2, ())


def test_no_health_check_probes_nothing(tmp_path: Path) -> None:
    assert checks_of(load(write(tmp_path, "", ""))) == {}


@pytest.mark.parametrize(("check", "field", "message"), [
    ("{timeout: 0s}", "timeout", "must be > 0"),
    ("{path: healthz}", "path", "must start with /"),
    ("{path: '/a b'}", "path", "must start with /"),
    ("{unhealthy_threshold: 0}", "unhealthy_threshold", "must be >= 1"),
    ("{expect_status: [700]}", "expect_status", "must be <= 599"),
    ("{interval: 0s}", "interval", "must be > 0"),
    ("{paht: /x}", "paht", "unknown key"),
])
def test_bad_check_is_refused_at_its_line(
    tmp_path: Path, check: str, field: str, message: str
) -> None:
    path = write(tmp_path, f"    health_check: {check}", "")
    with pytest.raises(ConfigError) as info:
        load(path)
    (error,) = info.value.errors
    assert error.startswith(f"{path}:10:"), error
    assert field in error and message in error, error
