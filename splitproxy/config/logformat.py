"""How log records are written: `text` for a terminal, `json` (one object per line) for a log
pipeline (Loki, Elasticsearch, Cloud Logging).

Here, below every plane, because the data-plane workers format their own records the way the
control process does. A JSON line carries `time` (UTC, ISO 8601, milliseconds), `level`,
`logger`, `message`, every field given with `extra={...}` (a route, a reason, counts) and, for
an exception, `exc` (the traceback as one string: still one line).
"""

from __future__ import annotations

import json
import logging
import sys
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


def formatter(fmt: Format, worker: int | None = None) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter({"worker": worker} if worker is not None else None)
    name = "%(name)s" if worker is None else f"%(name)s[w{worker}]"
    return logging.Formatter(TEXT.replace("%(name)s", name))


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
