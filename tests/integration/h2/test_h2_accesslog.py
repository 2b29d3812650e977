"""HTTP/2 streams in the access log: one line per stream, the same fields as HTTP/1.1."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from h2.errors import ErrorCodes

from tests.support.configs import proxy_config, route
from tests.support.h2client import h2_client
from tests.support.proxy import run_proxy
from tests.support.upstream import run_upstream
from tests.support.waiting import wait_until


def fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.__dict__["access"] for r in caplog.records if r.name == "splitproxy.access"]


async def test_each_stream_is_one_access_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "splitproxy.access")
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], logging={"access_log": True})
        async with run_proxy(cfg) as srv, h2_client(srv.port) as client:
            ok = await client.get("/a?token=secret", [("x-request-id", "r-1")])
            posted = await client.response(client.request("POST", "/echo", body=b"x" * 1000))
            gone = client.request("GET", "/slow?delay=5")
            await wait_until(lambda: up.in_flight == 1)
            client.conn.reset_stream(gone, ErrorCodes.CANCEL)
            client.flush()
            await wait_until(lambda: len(fields(caplog)) == 3, what="three lines")
    assert ok.status == 200 and posted.body == b"x" * 1000
    first, second, third = fields(caplog)
    assert first["method"] == "GET" and first["path"] == "/a" and first["status"] == 200
    assert first["version"] == "stable" and first["request_id"] == "r-1"
    assert first["end"] == "done" and first["upstream"] == f"127.0.0.1:{up.port}"
    assert second["method"] == "POST" and second["received"] > 1000
    assert second["sent"] > 1000
    assert third["end"] == "client-closed" and third["status"] == 499
