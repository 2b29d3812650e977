"""`splitproxy status`: once, `--watch` (redrawn on a terminal, repeated into a pipe), or
`--wait-for PHASE` for CI: poll until the route's rollout reaches the phase, and say by the
exit code how the wait ended (as `kubectl argo rollouts status --timeout` does)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from splitproxy.cli.client import AdminClient, AdminError
from splitproxy.cli.exitcodes import ExitCode
from splitproxy.cli.render import one_line, render
from splitproxy.control.status import RouteStatus, Status, to_json
from splitproxy.rollout import Phase

# Phases a rollout stays in until an operator or a new rollout moves it: waiting on after
# one of them (but the one waited for) would only run into the timeout.
FINAL = (Phase.PROMOTED, Phase.ABORTED)
WAITABLE = (Phase.PROMOTED, Phase.ABORTED, Phase.PAUSED)
CLEAR = "\x1b[2J\x1b[H"  # clear the screen, cursor home


def outcome(phase: Phase, wanted: Phase) -> ExitCode | None:
    """How a wait for `wanted` ends at `phase`; None: it goes on."""
    if phase == wanted:
        return ExitCode.OK
    if phase in FINAL:
        return ExitCode.OTHER_OUTCOME
    return None


def _routes(status: Status, route: str | None) -> list[RouteStatus]:
    if route is None:
        return status.routes
    found = status.route(route)
    if found is None:
        raise AdminError(f"no route named {route!r}", ExitCode.NOT_FOUND)
    return [found]


def show(client: AdminClient, route: str | None, as_json: bool, out: TextIO) -> int:
    """The status once: a table, or the JSON (of one route when named)."""
    status = client.status()
    routes = _routes(status, route)
    if as_json:
        out.write((to_json(routes[0]) if route is not None else to_json(status)) + "\n")
    else:
        out.write(render(status, routes) + "\n")
    return ExitCode.OK


def watch(client: AdminClient, route: str | None, interval: float, out: TextIO,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Refresh until interrupted. A terminal is redrawn in place; a pipe or file gets each
    refresh after the last, with no control codes in it."""
    redraw = out.isatty()
    while True:
        try:
            status = client.status()
            text = render(status, _routes(status, route))
        except AdminError as exc:
            text = f"error: {exc}"
        out.write((CLEAR + text if redraw else text + "\n") + "\n")
        out.flush()
        sleep(interval)


def wait_for(client: AdminClient, route: str, wanted: Phase, timeout: float | None,
             interval: float, out: TextIO, err: TextIO, revision: str | None = None,
             clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> int:
    """Poll until `route` reaches `wanted`; print a line each time the rollout moves.
    `revision`: only the rollout of this `rollout.revision` counts (until the proxy has
    loaded it, the previous rollout's phase says nothing about it).

    An admin API that does not answer at the first poll is an error at once (a wrong
    address); later, it is retried until the timeout (the proxy may be restarting)."""
    deadline = None if timeout is None else clock() + timeout
    last_line: str | None = None
    last_error: str | None = None
    polled = False
    while True:
        try:
            status = client.status()
            [found] = _routes(status, route)
        except AdminError as exc:
            if not polled or exc.code != ExitCode.UNREACHABLE:
                err.write(f"error: {exc}\n")
                return exc.code
            last_error = str(exc)
        else:
            polled, last_error = True, None
            current = revision is None or found.rollout.revision == revision
            line = one_line(found) if current else \
                f"{route}: waiting for revision {revision} (the proxy has " \
                f"{found.rollout.revision or 'none'})"
            if line != last_line:
                out.write(line + "\n")
                out.flush()
                last_line = line
            code = outcome(found.rollout.phase, wanted) if current else None
            if code == ExitCode.OTHER_OUTCOME:
                err.write(f"{route}: {found.rollout.phase}, not {wanted}\n")
            if code is not None:
                return code
        now = clock()
        if deadline is not None and now >= deadline:
            why = f" (last error: {last_error})" if last_error else ""
            err.write(f"{route}: not {wanted} within {timeout:g}s{why}\n")
            return ExitCode.TIMED_OUT
        sleep(interval if deadline is None else min(interval, deadline - now))
