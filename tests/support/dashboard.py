"""The shipped Grafana dashboard's queries as Prometheus runs them: the variables filled in as
"All" (and a short rate window for a 1 s scrape)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]
FILLED = {"namespace": ".*", "job": ".*", "instance": ".*", "route": ".*", "version": ".*",
          "__rate_interval": "1m", "__range": "1h"}


def fill(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: FILLED[m[1]], expr)


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "config" / "grafana" / "splitproxy.json")
                                      .read_text())
    return data


def panel_expr(title: str) -> str:
    [panel] = [p for p in dashboard()["panels"] if p["title"] == title]
    [target] = panel["targets"]
    return fill(target["expr"])

