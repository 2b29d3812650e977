"""How log records are written: `text` for a terminal, `json` (one object per line) for a log
pipeline (Loki, Elasticsearch, Cloud Logging).

Here, below every plane, because the data-plane workers format their own records the way the
control process does; the access log's cheap records and batched writes too (`RecordMaker`,
`handle_batch`). A JSON line carries `time` (UTC, ISO 8601, milliseconds), `level`,
`logger`, `message`, every field given with `extra={...}` (a route, a reason, counts) and, for
an exception, `exc` (the traceback as one string: still one line).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, Literal

from splitproxy.config import logsafe

Format = Literal["text", "json"]
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}

_active: Format = "text"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `static` fields (a worker's index) go into every line."""

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: an `extra` value JSON does not know (a Path, an enum) is still written.
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The text format; the time's date and seconds are rendered once a second, not once a
    line (with the access log on, a line per request: `localtime` and `strftime` were a
    tenth of a line's cost)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format,
                                        self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"  # as default_msec_format


def formatter(fmt: Format, worker: int | None = None) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter({"worker": worker} if worker is not None else None)
    name = "%(name)s" if worker is None else f"%(name)s[w{worker}]"
    return TextFormatter(TEXT.replace("%(name)s", name))


def configure(fmt: Format, level: int | str | None = None, worker: int | None = None) -> None:
    """Every handler of the root logger writes `fmt` (one to stderr is added if there is
    none); `level`, if given, is the root level. Control characters stay escaped (logsafe)."""
    global _active
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(formatter(fmt, worker))
    if level is not None:
        root.setLevel(level)
    logsafe.install()
    _active = fmt


def active() -> Format:
    """The format `configure` last set in this process (what a worker it starts should use)."""
    return _active


class _Quick(logging.LogRecord):
    """A `LogRecord` filled from a template rather than by `LogRecord.__init__`."""


class RecordMaker:
    """Records of one logger at one level, for a logger that writes a line per request.

    `logger.info()` costs 10-15 µs before any handler sees the record (measured on the 2-core
    machine): it finds the caller's frame, looks up the thread, process and multiprocessing
    names and splits the source path, the same for every record. Here those fields are
    copied from a template made once per process and thread, and only the message, the time
    and the extra fields are new: a real `LogRecord` (every handler, filter and formatter
    takes it), less than 2 µs. A factory set with `logging.setLogRecordFactory` is not used.
    """

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger = logger
        self.level = level
        self._template: dict[str, Any] = {}
        self._thread = 0  # the thread the template was made in (0: none made yet)
        self._start = 0.0  # logging's start time, for relativeCreated
        # A forked child is another process: a new template (getpid per record would be a
        # system call, 1-2 µs here).
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._thread = 0

    def make(self, message: str, extra: dict[str, Any]) -> logging.LogRecord:
        thread = threading.get_ident()
        if thread != self._thread:
            made = self.logger.makeRecord(self.logger.name, self.level, __file__, 0, "", (),
                                          None, "make")
            made.args = None  # as a record logged without arguments
            self._template = vars(made)
            self._start = made.created - made.relativeCreated / 1000.0
            self._thread = thread
        record = _Quick.__new__(_Quick)
        fields = record.__dict__
        fields.update(self._template)
        now = time.time()
        fields["msg"] = message
        fields["created"] = now
        fields["msecs"] = int((now - int(now)) * 1000) + 0.0
        fields["relativeCreated"] = (now - self._start) * 1000.0
        fields.update(extra)
        return record


# Handlers whose emit() is a formatted line written to `stream` and flushed: their lines of
# a batch are written in one call. Any other handler (a subclass too) gets handle() per record.
_PLAIN_STREAMS = (logging.StreamHandler, logging.FileHandler)


def handle_batch(logger: logging.Logger, records: list[logging.LogRecord]) -> None:
    """What `logger.handle(record)` does for each record, in order (the logger's filters,
    then every handler up the hierarchy, each with its level, filters and formatter), except
    that a plain stream handler writes its lines of the batch in one call and flushes once."""
    if logger.disabled:
        return
    passed = [r for r in records if logger.filter(r)]
    found = False
    current: logging.Logger | None = logger
    while current is not None and passed:
        for handler in current.handlers:
            found = True
            mine = [r for r in passed if r.levelno >= handler.level]
            if isinstance(handler, logging.StreamHandler) and type(handler) in _PLAIN_STREAMS \
                    and handler.stream is not None:
                _write_lines(handler, mine)
            else:
                for r in mine:
                    handler.handle(r)
        current = current.parent if current.propagate else None
    resort = logging.lastResort
    if not found and resort is not None:
        for r in passed:
            if r.levelno >= resort.level:
                resort.handle(r)


def _write_lines(handler: logging.StreamHandler[Any], records: list[logging.LogRecord]) -> None:
    handler.acquire()  # formatting too, as in emit(): a formatter may keep state (its clock)
    try:
        lines = []
        for r in records:
            if handler.filter(r):
                try:
                    lines.append(handler.format(r))
                except Exception:
                    handler.handleError(r)
        if lines:
            try:
                handler.stream.write(handler.terminator.join(lines) + handler.terminator)
                handler.flush()
            except RecursionError:  # as StreamHandler.emit
                raise
            except Exception:
                handler.handleError(records[-1])
    finally:
        handler.release()
