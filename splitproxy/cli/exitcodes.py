"""The exit codes of `splitproxy`, one list for every command (the README has the table).

Scripts and CI branch on them: a refused action (the rollout is in a phase where it does not
apply) is not a missing route, and neither is an admin API that does not answer.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # done; `status --wait-for`: the phase was reached
    # Anything not listed below: an invalid config, a listener that cannot bind (port in
    # use), an admin API error without a code of its own (401, 5xx), an unexpected answer.
    ERROR = 1
    USAGE = 2  # a bad command line (argparse's code), or an argument the admin API refused (400)
    REFUSED = 3  # the action does not apply in the rollout's phase (409)
    NOT_FOUND = 4  # no such route (404)
    UNREACHABLE = 5  # no answer from the admin API (refused, timed out, unknown host)
    TIMED_OUT = 6  # `status --wait-for`: not reached within --timeout
    # `status --wait-for`: the rollout reached a final phase other than the one waited for
    # (aborted while waiting for promoted, promoted while waiting for aborted or paused).
    OTHER_OUTCOME = 7
    INTERRUPTED = 130  # Ctrl-C while waiting (128 + SIGINT, as shells report it)


def for_http_status(code: int) -> ExitCode:
    """The exit code for an admin API answer with this HTTP status (>= 400)."""
    return {400: ExitCode.USAGE, 404: ExitCode.NOT_FOUND, 409: ExitCode.REFUSED}.get(
        code, ExitCode.ERROR)
