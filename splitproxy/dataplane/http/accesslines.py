"""The access log's lines on their way to the logging handlers: gathered, then handed over
together at most FLUSH_INTERVAL after the first of them or FLUSH_LINES at a time (nginx's
`access_log ... buffer= flush=`), so a plain stream handler writes and flushes once for many
lines instead of once per request.

The price: a line reaches the log up to FLUSH_INTERVAL late (its time is still the
request's end), may come after a later warning of another logger, and a worker killed
outright (SIGKILL, OOM) loses the lines it had not handed over. A server's stop hands over
what waits and from then on passes each line at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from splitproxy.config.logformat import RecordMaker, handle_batch

if TYPE_CHECKING:
    from splitproxy.dataplane.http.state import EventLoop, Timer

log = logging.getLogger("splitproxy.access")
# Asked for in the config: shown whatever the level of the other loggers (a handler on the
# root logger still receives it; `--log-level warning` quiets the rest, not this).
log.setLevel(logging.INFO)

FLUSH_INTERVAL: Final = 0.1  # seconds
FLUSH_LINES: Final = 128

_make = RecordMaker(log, logging.INFO).make  # one per process: its template is the process's


class AccessLines:
    """One server's access-log lines not yet handed to the handlers."""

    __slots__ = ("loop", "pending", "timer", "immediate")

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.pending: list[logging.LogRecord] = []
        self.timer: Timer | None = None
        self.immediate = False  # after the server's stop: no timer will run

    def add(self, message: str, fields: dict[str, Any]) -> None:
        """One request's line (`fields` also go on the record, as `record.access`)."""
        if not log.isEnabledFor(logging.INFO):
            return
        pending = self.pending
        pending.append(_make(message, {"access": fields}))
        if len(pending) >= FLUSH_LINES or self.immediate:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Hand every waiting line to the logging handlers now."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending:
            records, self.pending = self.pending, []
            handle_batch(log, records)

    def close(self) -> None:
        """The server stopped: what waits goes out, and later lines go out at once."""
        self.immediate = True
        self.flush()
