"""The CLI's side of the admin API: `splitproxy status | promote | abort | retry | pause |
resume` talk to a running proxy over HTTP."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TOKEN_ENV = "SPLITPROXY_ADMIN_TOKEN"


class AdminError(Exception):
    pass


class AdminClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token or os.environ.get(TOKEN_ENV) or None
        self.timeout = timeout

    def _request(self, method: str, path: str) -> dict[str, Any]:
        req = urllib.request.Request(self.base_url + path, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            try:
                message = json.loads(body).get("error", body)
            except ValueError:
                message = body.strip()
            raise AdminError(f"{exc.code}: {message}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise AdminError(f"cannot reach the admin API at {self.base_url}: {exc}") from exc

    def status(self) -> dict[str, Any]:
        return self._request("GET", "/status")

    def act(self, route: str, action: str, full: bool = False,
            reason: str | None = None) -> dict[str, Any]:
        query = []
        if full:
            query.append("full=1")
        if reason:
            query.append("reason=" + urllib.parse.quote(reason))
        suffix = ("?" + "&".join(query)) if query else ""
        return self._request("POST", f"/routes/{route}/{action}{suffix}")


def _cell(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(status: dict[str, Any]) -> str:
    """The status as a table: a row per version, rollout facts and recent verdicts per route."""
    config = status["config"]
    last = config["last_reload"]
    lines = [
        f"config {config['path']} generation {config['generation']}"
        + (f"  LAST RELOAD FAILED: {last['error']}" if last.get("result") == "error" else ""),
        f"window {status.get('realized_window_seconds', 0)}s",
        "",
    ]
    header = ("ROUTE", "PHASE", "STEP", "VERSION", "WEIGHT", "EFFECTIVE", "SHARE", "REQ",
              "ERR%", "P99ms", "ENDPOINTS")
    rows: list[tuple[str, ...]] = [header]
    notes: list[str] = []
    for route in status["routes"]:
        ro = route.get("rollout", {})
        phase = ro.get("phase", "-")
        step = f"{ro.get('step', 0)}/{ro.get('steps', 0)}" if ro.get("steps") else "-"
        first = True
        for name, v in route["versions"].items():
            up = sum(1 for e in v["endpoints"] if e["up"])
            err = v.get("error_rate_in_window")
            rows.append((
                route["name"] if first else "", phase if first else "", step if first else "",
                name, str(v["configured_weight"]), str(v["effective_weight"]),
                _cell(v.get("realized_share"), 3), str(v["requests_in_window"]),
                _cell(err * 100 if err is not None else None, 2),
                _cell(v.get("p99_ms_in_window")), f"{up}/{len(v['endpoints'])}",
            ))
            first = False
        reason = ro.get("abort_reason") or ro.get("pause_reason") or ro.get("gate")
        if reason:
            notes.append(f"{route['name']}: {phase}: {reason}")
        notes += _guard_lines(route["name"], ro)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _guard_lines(name: str, ro: dict[str, Any]) -> list[str]:
    """The guard's verdict per version and metric: estimate, interval, evidence, counts."""
    out = []
    guard = ro.get("guard")
    if guard:
        out.append(f"{name}: guard {guard['outcome']} (segment {guard['segment']}, fail at "
                   f"e >= {guard['fail_at']:.0f}, pass at e >= {guard['pass_at']:.0f})")
        out += [f"  {t['summary']}" for t in guard["tests"]]
        # analysis.metrics, beside the built-in tests: dry-run ones marked, failed reads said.
        out += [f"  {'[dry run] ' if m['dry_run'] else ''}{m['summary']}"
                + (f" (last reading: {m['error']})" if m.get("error") else "")
                for m in guard.get("metrics", [])]
    checks = ro.get("checks", [])[-5:]
    if checks:
        verdicts = " ".join(c["result"] for c in checks)
        out.append(f"{name}: last checks (oldest first): {verdicts}")
    return out


def watch(client: AdminClient, interval: float, once: bool) -> int:
    while True:
        try:
            text = render(client.status())
        except AdminError as exc:
            text = f"error: {exc}"
            if once:
                sys.stderr.write(text + "\n")
                return 1
        if once:
            sys.stdout.write(text + "\n")
            return 0
        sys.stdout.write("\x1b[2J\x1b[H" + text + "\n")  # clear screen, home, table
        sys.stdout.flush()
        time.sleep(interval)
