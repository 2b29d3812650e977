"""`/status` as a terminal table: a row per version, then rollout notes and the guard's
verdicts per route."""

from __future__ import annotations

from splitproxy.control.status import RolloutStatus, RouteStatus, Status


def _cell(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(status: Status, routes: list[RouteStatus] | None = None) -> str:
    """The status as a table; `routes`: only these (default: all)."""
    config = status.config
    last = config.last_reload
    lines = [
        f"config {config.path} generation {config.generation}"
        + (f"  LAST RELOAD FAILED: {last.error}" if last.result == "error" else ""),
        *(f"certificates of {c.listener} REFUSED, the previous ones serve: {c.error}"
          for c in config.certificates_refused),
        f"window {status.realized_window_seconds}s",
        "",
    ]
    header = ("ROUTE", "PHASE", "STEP", "VERSION", "WEIGHT", "EFFECTIVE", "SHARE", "REQ",
              "ERR%", "P99ms", "ENDPOINTS")
    rows: list[tuple[str, ...]] = [header]
    notes: list[str] = []
    for route in status.routes if routes is None else routes:
        ro = route.rollout
        phase = str(ro.phase)
        step = f"{ro.step}/{ro.steps}" if ro.steps else "-"
        first = True
        for name, v in route.versions.items():
            up = sum(1 for e in v.endpoints if e.up)
            err = v.error_rate_in_window
            rows.append((
                route.name if first else "", phase if first else "", step if first else "",
                name, str(v.configured_weight), str(v.effective_weight),
                _cell(v.realized_share, 3), str(v.requests_in_window),
                _cell(err * 100 if err is not None else None, 2),
                _cell(v.p99_ms_in_window), f"{up}/{len(v.endpoints)}",
            ))
            first = False
            notes += [f"{route.name}/{name}: {e.url} down on its health check"
                      f" ({e.active_last_error})" for e in v.endpoints if e.active == "down"]
        if ro.note:
            notes.append(f"{route.name}: {phase}: {ro.note}")
        if ro.switching_to:
            notes.append(f"{route.name}: validating the switch to {ro.switching_to}")
        notes += [f"{route.name}: to the canary: "
                  + (f"header {h.header}" if h.header else f"cookie {h.cookie}")
                  + f" {h.match} {h.value!r}" for h in ro.header_routes]
        if ro.mirror is not None:
            notes.append(f"{route.name}: mirror: {ro.mirror.percent:g}% copied to "
                         f"{ro.mirror.to}")
        notes += _guard_lines(route.name, ro)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _guard_lines(name: str, ro: RolloutStatus) -> list[str]:
    """The guard's verdict per version and metric: estimate, interval, evidence, counts."""
    out = []
    guard = ro.guard
    if guard:
        out.append(f"{name}: guard {guard.outcome} (segment {guard.segment}, fail at "
                   f"e >= {guard.fail_at:.0f}, pass at e >= {guard.pass_at:.0f})")
        out += [f"  {t.summary}" for t in guard.tests]
        # analysis.metrics, beside the built-in tests: dry-run ones marked, failed reads said.
        out += [f"  {'[dry run] ' if m.dry_run else ''}{m.summary}"
                + (f" (last reading: {m.error})" if m.error else "")
                for m in guard.metrics]
    checks = ro.checks[-5:]
    if checks:
        verdicts = " ".join(c.result for c in checks)
        out.append(f"{name}: last checks (oldest first): {verdicts}")
    return out


def one_line(route: RouteStatus) -> str:
    """Where a route's rollout is, in one line (what `--wait-for` prints as it changes)."""
    ro = route.rollout
    step = f" step {ro.step}/{ro.steps}" if ro.steps else ""
    note = f": {ro.note}" if ro.note else ""
    return f"{route.name}: {ro.phase}{step}{note}"
