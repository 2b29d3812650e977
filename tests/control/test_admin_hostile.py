"""Threat: the admin API turned against its operator: an exception per request (and a
traceback in the log) from a malformed header, a log line forged through `?reason=`.

Rules: a non-UTF-8 `Authorization` is a wrong token (401); `reason` must be printable text of
at most 500 characters (else 400); and every log message has its control characters escaped
(`splitproxy.config.logsafe`, installed on the root handlers by `splitproxy run`), whoever logs it.
"""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import pytest

from splitproxy.config import logsafe
from tests.support.configs import proxy_config, route
from tests.support.rawhttp import raw_client
from tests.support.service import admin, metric, running_service, scrape
from tests.support.upstream import run_upstream


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


async def test_non_utf8_authorization_is_401_without_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("SPLITPROXY_ADMIN_TOKEN", raising=False)
    (tmp_path / "tok").write_text("s3cret\n")
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], admin={"token_file": "tok"})
        async with running_service(tmp_path, cfg) as (svc, _):
            for value in (b"Bearer \xff\xfe", b"\xc3\x28", b"Bearer s3cret\xff"):
                got = await _raw(svc.admin_port, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"Authorization: " + value + b"\r\n\r\n")
                assert got.startswith(b"HTTP/1.1 401"), got[:100]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_reason_with_control_characters_is_refused(tmp_path: Path) -> None:
    async with run_upstream("stable") as up, run_upstream("canary") as can:
        cfg = proxy_config([route({"stable": up.url, "canary": can.url})])
        async with running_service(tmp_path, cfg) as (svc, _):
            for reason in ("a%0d%0a2026-01-01%20INFO%20forged", "x" * 501, "bell%07"):
                got = await _raw(svc.admin_port, f"POST /routes/shop/abort?reason={reason} "
                                 "HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Splitproxy-Action: 1\r\n"
                                 "Content-Length: 0\r\n\r\n".encode())
                assert got.startswith(b"HTTP/1.1 400"), got[:200]


def test_every_log_message_has_its_control_characters_escaped() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("splitproxy.test-logsafe")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logsafe.install(logger)
        logger.warning("abort reason: %s", "oops\r\n2026-01-01 INFO splitproxy: forged")
        logger.warning("raw\nmessage \x1b[31mred\u2028")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("with %s", "a traceback")
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[0] == "abort reason: oops\\r\\n2026-01-01 INFO splitproxy: forged"
    assert lines[1] == "raw\\nmessage \\x1b[31mred\\u2028"
    assert lines[2] == "with a traceback" and lines[3].startswith("Traceback")


async def test_the_proxys_own_503s_are_a_metric_of_their_own(tmp_path: Path) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], limits={"max_connections": 1})
        async with running_service(tmp_path, cfg) as (svc, _):
            async with raw_client(svc.proxy_port) as a:
                assert (await a.request("GET", "/")).status == 200
                async with raw_client(svc.proxy_port) as b:
                    assert (await b.request("GET", "/")).status == 503
            async with admin(svc) as session:
                samples = await scrape(session)
    assert metric(samples, "splitproxy_proxy_errors_total", kind="overload") == 1
    assert metric(samples, "splitproxy_requests_total", code="503") is None
