"""The configs we ship as examples must load: they are what operators copy first."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitproxy.config.models import describe, load

CONFIG_DIR = Path(__file__).parents[2] / "config"
# Only the top level: subfolders (kubernetes, grafana, ...) hold other tools' files.
EXAMPLES = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_documented_examples_exist() -> None:
    assert {"example.yaml", "demo.yaml"} <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_loads(path: Path) -> None:
    config = load(path)
    assert describe(config)


def test_demo_config_is_what_splitproxy_demo_expects() -> None:
    config = load(CONFIG_DIR / "demo.yaml")
    assert (config.listen[0].address, config.admin.listen) == ("127.0.0.1:8080", "127.0.0.1:9901")
    (route,) = config.routes
    assert route.name == "demo"
    assert route.match.host is None
    assert {v: c.endpoints for v, c in route.versions.items()} == {
        "stable": ("http://127.0.0.1:9001",),
        "canary": ("http://127.0.0.1:9002",),
    }
    assert route.weights == {"stable": 100, "canary": 0}  # the steps own the weights
    assert route.analysis is not None and route.rollout is not None and route.rollout.steps
    assert route.sticky.pin_header == "X-Splitproxy-Version"
    assert route.sticky.hash_header == "X-User-Id"
    assert route.sticky.cookie == "splitproxy-demo"
