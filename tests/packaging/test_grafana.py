"""config/grafana/splitproxy.json: the dashboard loads, asks only for series splitproxy exports
(names read from splitproxy/control/metrics.py, and prometheus-client's process_*), defines the
variables its queries use, narrows every query by namespace, job and instance, and every query
parses as PromQL (promtool, where installed). What the queries answer is checked against a real
Prometheus in tests/replicas/test_promql.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import ProcessCollector

from splitproxy.rollout import PHASES
from tests.support.processes import require_binary

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "splitproxy.json"

# Samples prometheus_client derives from a family's name: counters, histograms, info.
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_info")
# Grafana's own variables.
BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s", "__all"}


# What narrows every query to one fleet: Prometheus' target labels, as dashboard variables.
SCOPE = 'namespace=~"$namespace",job=~"$job",instance=~"$instance"'
METRIC = re.compile(r"\b(?:splitproxy|process)_[a-z0-9_]+")


def _exported() -> set[str]:
    source = (ROOT / "splitproxy" / "control" / "metrics.py").read_text()
    families = set(re.findall(r'"(splitproxy_[a-z0-9_]+)"', source))
    assert families, "no metric names found in splitproxy/control/metrics.py"
    # The control process's own, from prometheus-client's ProcessCollector (on Linux).
    families |= {m.name for m in ProcessCollector(registry=None).collect()}
    assert "process_resident_memory_bytes" in families
    return {family + suffix for family in families for suffix in SUFFIXES}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows, collapsed or not


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every annotation query."""
    out = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            out.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    return out


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "splitproxy"
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]


def test_the_panels_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    exprs = {title: " ".join(t["expr"] for t in p.get("targets", []))
             for p in _panels(dashboard["panels"]) for title in [p["title"]]}
    want = {
        "Request rate by version": "splitproxy_requests_total",
        "Error rate (5xx ratio)": 'code=~"5.."',
        "Latency p50": "histogram_quantile(0.5,",
        "Latency p99": "histogram_quantile(0.99,",
        "Effective weights": "splitproxy_route_weight",
        "Realized share": "splitproxy_requests_total",
        "Rollout phase": "splitproxy_rollout_phase",
        "Responses by status code": "by (route, version, code)",
        "Requests in flight": "splitproxy_requests_in_flight",
        "Memory (RSS)": "splitproxy_worker_resident_memory_bytes",
        "CPU": "splitproxy_worker_cpu_seconds_total",
        "Open file descriptors": "splitproxy_worker_open_fds",
        # issue 15: shadow traffic, custom metrics, active health, notifications
        "Shadow copies by result": "by (route, to, result)",
        "Shadow match rate": 'result=~"match|mismatch"',
        "Shadow copies dropped or failed": 'result=~"dropped|error"',
        "Custom metrics: estimate and threshold": "splitproxy_analysis_metric_threshold",
        "Custom metric verdicts": "splitproxy_analysis_metric_verdict",
        "Endpoint health by check": "by (route, version, endpoint, check)",
        "Aborts onto an unhealthy baseline":
            "splitproxy_rollout_aborts_onto_unhealthy_baseline_total",
        "Notifications": "splitproxy_notifications_total",
    }
    for title, needle in want.items():
        assert needle in exprs.get(title, ""), title
    for title in ("Request rate by version", "Error rate (5xx ratio)", "Latency p99",
                  "Requests in flight"):
        assert "by (route, version" in exprs[title], f"{title}: per version"
    # A version without any 5xx shows 0, not "no data": `or` fills in its zero.
    assert "or\n  0 * sum by (route, version)" in exprs["Error rate (5xx ratio)"]
    # One annotation per abort, at its time: the value is the abort's time, the same at
    # every step that sees it, which Grafana joins into one ("series value as timestamp").
    (aborts,) = [a for a in dashboard["annotations"]["list"] if a["name"] == "Rollout aborts"]
    assert "splitproxy_rollout_last_abort_timestamp_seconds" in aborts["expr"]
    assert aborts["expr"].replace(" ", "").endswith("*1000>0")  # Grafana wants milliseconds
    assert aborts["useValueForTime"] is True
    assert aborts["enable"] is True and aborts["iconColor"] == "red"


def test_the_rollout_phase_is_one_row_per_route_with_aborted_in_red(
    dashboard: dict[str, Any],
) -> None:
    (panel,) = [p for p in _panels(dashboard["panels"]) if p["title"] == "Rollout phase"]
    (target,) = panel["targets"]
    assert target["expr"].startswith("max by (route) (")
    assert target["legendFormat"] == "{{route}}"
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    shown = {m["text"]: (int(value), m["color"]) for value, m in mapping["options"].items()}
    assert set(shown) == {str(p) for p in PHASES}, "every phase, no other"
    for name, (value, _) in shown.items():
        assert f'{value} * splitproxy_rollout_phase{{{SCOPE},route=~"$route",phase="{name}"}}' \
            in target["expr"], name
    assert shown["aborted"][1] == "red"
    assert "red" not in {color for name, (_, color) in shown.items() if name != "aborted"}


def test_queries_use_only_metrics_splitproxy_exports(dashboard: dict[str, Any]) -> None:
    exported = _exported()
    queries = _queries(dashboard)
    assert len(queries) >= 10
    for where, expr in queries:
        names = set(METRIC.findall(expr))
        assert any(n.startswith("splitproxy_") for n in names), \
            f"{where}: no splitproxy metric in {expr!r}"
        assert names <= exported, f"{where}: not exported: {sorted(names - exported)}"


def test_every_query_is_narrowed_by_namespace_job_and_instance(
    dashboard: dict[str, Any],
) -> None:
    """Two fleets in one Prometheus (namespaces, jobs) never mix on the dashboard."""
    for where, expr in _queries(dashboard):
        for m in re.finditer(r"\b((?:splitproxy|process)_[a-z0-9_]+)(\{[^}]*\})?", expr):
            assert (m[2] or "").startswith("{" + SCOPE), f"{where}: {m[0]}"


def test_variables_exist_and_cover_every_reference(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exported = _exported()
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "namespace", "job", "instance", "route", "version"]
    for name in ("namespace", "job", "instance", "route", "version"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"]["uid"] == "${datasource}"
        m = re.fullmatch(r"label_values\((splitproxy_[a-z0-9_]+)(\{.*\})?, *(\w+)\)",
                         var["query"]["query"])
        assert m and m[1] in exported and m[3] == name, var["query"]
        assert var["includeAll"] and var["allValue"] == ".*"  # `=~"$route"` matches all
        assert var["multi"] and var["refresh"] == 2  # on time range change
    # Each narrows by those before it.
    assert variables["job"]["query"]["query"] == \
        'label_values(splitproxy_build_info{namespace=~"$namespace"}, job)'
    assert variables["route"]["query"]["query"] == \
        f"label_values(splitproxy_route_weight{{{SCOPE}}}, route)"
    text = DASHBOARD.read_text()
    used = set(re.findall(r"\$\{?(\w+)", text))
    assert used - BUILTINS <= set(variables), sorted(used - BUILTINS - set(variables))


def test_queries_parse_as_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Every query as a recording rule (Grafana's variables filled in) for `promtool check
    rules`, which parses each expression."""
    values = {"__rate_interval": "1m", "__interval": "30s", "__range": "3h",
              "namespace": ".*", "job": ".*", "instance": ".*", "route": ".*", "version": ".*"}
    queries = _queries(dashboard)
    rules = []
    for i, (_, expr) in enumerate(queries):
        filled = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m[1]], expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": filled})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([require_binary("promtool"), "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=30)
    index = "\n".join(f"rule {i + 1}: {where}" for i, (where, _) in enumerate(queries))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{index}"
