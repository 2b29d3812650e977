"""accesslines + logformat's batch: access-log lines wait at most FLUSH_INTERVAL (on a fake
clock) or FLUSH_LINES, then each plain stream handler writes them in one call, in order,
through its own filters and formatter (text or JSON); any other handler gets each record."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from splitproxy.config import logsafe
from splitproxy.config.logformat import JsonFormatter, RecordMaker, formatter, handle_batch
from splitproxy.dataplane.http.accesslines import FLUSH_INTERVAL, FLUSH_LINES, AccessLines, log
from tests.support.fakeio import FakeLoop


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


@pytest.fixture
def stream() -> Iterator[CountingStream]:
    """A plain StreamHandler on the access logger, text format, control characters escaped;
    the access logger does not propagate meanwhile (the test's own records only)."""
    out = CountingStream()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter("text"))
    handler.addFilter(logsafe.EscapeControlCharacters())
    log.addHandler(handler)
    log.propagate = False
    try:
        yield out
    finally:
        log.removeHandler(handler)
        log.propagate = True


def fields(n: int) -> dict[str, Any]:
    return {"route": "shop", "status": 200, "n": n}


def test_lines_wait_for_the_interval_then_go_out_in_one_write(stream: CountingStream) -> None:
    loop = FakeLoop()
    lines = AccessLines(loop)
    for n in range(3):
        lines.add(f"route=shop n={n}", fields(n))
    loop.advance(FLUSH_INTERVAL * 0.9)
    assert stream.getvalue() == ""
    loop.advance(FLUSH_INTERVAL * 0.1)
    written = stream.getvalue().splitlines()
    assert [ln.split(": ", 1)[1] for ln in written] == [f"route=shop n={n}" for n in range(3)]
    assert all(" INFO splitproxy.access: " in ln for ln in written)
    assert stream.writes == 1
    lines.add("route=shop n=3", fields(3))  # a new interval starts with the next line
    assert len(loop.timers) == 1


def test_a_full_batch_goes_out_at_once_and_stop_lets_nothing_wait(
        stream: CountingStream) -> None:
    loop = FakeLoop()
    lines = AccessLines(loop)
    for n in range(FLUSH_LINES):
        lines.add(f"n={n}", fields(n))
    assert len(stream.getvalue().splitlines()) == FLUSH_LINES and stream.writes == 1
    lines.add("n=last-before-stop", fields(0))
    lines.close()
    lines.add("n=after-stop", fields(0))
    last, after = stream.getvalue().splitlines()[-2:]
    assert last.endswith("n=last-before-stop") and after.endswith("n=after-stop")


def test_records_are_real_ones_and_the_json_format_carries_the_fields() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter({"worker": 1}))
    log.addHandler(handler)
    log.propagate = False
    try:
        lines = AccessLines(FakeLoop())
        before = time.time()
        lines.add('route=shop path="/a b"', {"route": "shop", "path": "/a b"})
        lines.flush()
    finally:
        log.removeHandler(handler)
        log.propagate = True
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["logger"] == "splitproxy.access" and record["level"] == "INFO"
    assert record["message"] == 'route=shop path="/a b"'
    assert record["access"] == {"route": "shop", "path": "/a b"} and record["worker"] == 1
    assert record["time"].endswith("Z")
    made = RecordMaker(log, logging.INFO).make("m", {"access": {}})
    assert isinstance(made, logging.LogRecord)
    assert (made.process, made.thread, made.levelname) == (os.getpid(), threading.get_ident(),
                                                          "INFO")
    assert before <= made.created <= time.time() and made.getMessage() == "m"


def test_a_batch_takes_the_paths_handle_would() -> None:
    """Logger filters, handler levels and filters, propagation to the parents; a handler
    that is not a plain stream one (a subclass, pytest's caplog) gets each record."""
    parent = logging.getLogger("test_batch")
    child = logging.getLogger("test_batch.child")
    plain_out, sub_out = io.StringIO(), io.StringIO()
    plain = logging.StreamHandler(plain_out)
    plain.setLevel(logging.WARNING)

    class Sub(logging.StreamHandler):  # type: ignore[type-arg]
        handled = 0

        def handle(self, record: logging.LogRecord) -> bool:
            Sub.handled += 1
            return bool(super().handle(record))

    sub = Sub(sub_out)
    sub.addFilter(lambda r: "drop" not in r.getMessage())
    parent.addHandler(sub)
    child.addHandler(plain)
    child.addFilter(lambda r: "logger-filtered" not in r.getMessage())
    records = [child.makeRecord(child.name, level, "", 0, msg, (), None) for level, msg in [
        (logging.INFO, "info"), (logging.WARNING, "warn"), (logging.INFO, "drop"),
        (logging.ERROR, "logger-filtered")]]
    try:
        handle_batch(child, records)
        child.propagate = False
        handle_batch(child, [child.makeRecord(child.name, logging.ERROR, "", 0, "alone", (),
                                              None)])
    finally:
        child.propagate = True
        parent.removeHandler(sub)
        child.removeHandler(plain)
    assert plain_out.getvalue().splitlines() == ["warn", "alone"]
    assert sub_out.getvalue().splitlines() == ["info", "warn"]
    assert Sub.handled == 3  # info, warn, drop (its own filter refused it)
