"""`analysis.prometheus`: where the Prometheus source reads and which series (label matchers),
with which credentials; `prometheus_url` keeps working. Errors at their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitproxy.config.metrics import render
from splitproxy.config.models import ConfigError, load
from splitproxy.control.sources.prometheus import query

HEAD = """\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
      canary: {endpoints: ["http://127.0.0.1:9002"]}
    weights: {stable: 90, canary: 10}
    analysis:
      source: prometheus
"""


def write(tmp_path: Path, analysis: str) -> Path:
    path = tmp_path / "shop.yaml"
    path.write_text(HEAD + analysis)
    return path


def errors(tmp_path: Path, analysis: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, analysis))
    return info.value.errors


def test_prometheus_url_keeps_working(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "      prometheus_url: http://prometheus:9090\n"))
    analysis = cfg.routes[0].analysis
    assert analysis is not None
    assert analysis.prometheus_url == "http://prometheus:9090"
    assert analysis.prometheus_query.url == "http://prometheus:9090"
    assert analysis.prometheus_query.labels == {}


def test_the_prometheus_block_with_labels_and_a_token(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """\
      prometheus:
        url: https://prometheus.monitoring:9090
        labels: {job: shop, namespace: prod}
        bearer_token_file: /var/run/secrets/prometheus/token
"""))
    analysis = cfg.routes[0].analysis
    assert analysis is not None
    where = analysis.prometheus_query
    assert where.url == "https://prometheus.monitoring:9090"
    assert where.labels == {"job": "shop", "namespace": "prod"}
    assert where.bearer_token_file == "/var/run/secrets/prometheus/token"
    assert where.basic_auth is None


def test_basic_auth(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "      prometheus:\n        basic_auth: {username: sp, "
                               "password_file: /run/secrets/pw}\n"))
    analysis = cfg.routes[0].analysis
    assert analysis is not None and analysis.prometheus.basic_auth is not None
    assert analysis.prometheus.basic_auth.username == "sp"
    assert analysis.prometheus_query.url == "http://127.0.0.1:9090"  # the default


@pytest.mark.parametrize(("analysis", "line", "field", "says"), [
    ("      prometheus_url: http://a:9090\n      prometheus: {url: http://b:9090}\n",
     9, "analysis.prometheus_url", "not both"),
    ("      prometheus_url: prometheus:9090\n", 9, "analysis.prometheus_url",
     "expected an http(s) URL"),
    ("      prometheus:\n        labels: {9job: a}\n", 10, "analysis.prometheus.labels.9job",
     "not a Prometheus label name"),
    ("      prometheus:\n        labels: {__name__: a}\n", 10,
     "analysis.prometheus.labels.__name__", "not a Prometheus label name"),
    ("      prometheus:\n        labels: {version: canary}\n", 10,
     "analysis.prometheus.labels.version", "label of splitproxy's own series"),
    ("      prometheus:\n        bearer_token_file: token.txt\n", 10,
     "analysis.prometheus.bearer_token_file", "must be an absolute path"),
    ("      prometheus:\n        bearer_token_file: /t\n        basic_auth: "
     "{username: a, password_file: /p}\n", 11, "analysis.prometheus.basic_auth", "not both"),
    ("      prometheus:\n        basic_auth: {username: 'a:b', password_file: /p}\n", 10,
     "analysis.prometheus.basic_auth.username", "should match pattern"),
])
def test_a_bad_prometheus_setting_is_refused_at_its_line(
    tmp_path: Path, analysis: str, line: int, field: str, says: str,
) -> None:
    [error] = errors(tmp_path, analysis)
    assert error.startswith(f"{tmp_path / 'shop.yaml'}:{line}: routes[0].{field}: "), error
    assert says in error


def test_the_query_carries_the_labels_sorted_and_quoted() -> None:
    assert query("shop", False, {"namespace": 'pr"od\\', "job": "shop"}) == (
        '{__name__=~"splitproxy_requests_total|splitproxy_upstream_timed_requests_total|'
        'splitproxy_upstream_slow_requests_total",route="shop",job="shop",'
        'namespace="pr\\"od\\\\"}')
    assert query("shop", False) == query("shop", False, {})


def test_custom_metric_queries_get_the_labels_where_they_write_them() -> None:
    query_text = 'x{version="{{version}}"{{ labels }}}'
    assert render(query_text, "shop", "canary", 60, {"namespace": "prod", "job": "a"}) == (
        'x{version="canary",job="a",namespace="prod"}')
    assert render(query_text, "shop", "canary", 60) == 'x{version="canary"}'  # no labels


def test_the_commented_prometheus_block_of_the_example_loads(tmp_path: Path) -> None:
    example = (Path(__file__).parents[2] / "config" / "example.yaml").read_text()
    lines = example.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "# prometheus:")
    block = []
    for ln in lines[start:]:
        if not ln.strip().startswith("#") or ln.strip().startswith("# prometheus_url"):
            break
        block.append(ln.replace("# ", "", 1))
    text = "\n".join(ln for ln in block if not ln.strip().startswith("#"))
    with_token = text.split("      basic_auth:")[0]  # one credential of the two
    cfg = load(write(tmp_path, "      max_error_rate: 0.01\n" + with_token + "\n"))
    analysis = cfg.routes[0].analysis
    assert analysis is not None
    assert analysis.prometheus.labels and analysis.prometheus.bearer_token_file
    [error] = errors(tmp_path, "      max_error_rate: 0.01\n" + text + "\n")
    assert "not both" in error  # both, uncommented as they are: refused, clearly
