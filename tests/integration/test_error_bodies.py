"""A proxy-made 5xx tells the client only that the upstream failed: endpoints (host names,
addresses, ports) and errno texts go to the log, never into a client-facing body."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import assert_error, get
from tests.support.rawupstream import respond_with, run_raw_upstream


async def test_a_502_names_no_upstream_and_the_log_does(
    refused_port: Callable[[], int], caplog: pytest.LogCaptureFixture
) -> None:
    port = refused_port()
    caplog.set_level(logging.DEBUG, logger="splitproxy.exchange")
    async with run_proxy(proxy_config([route({"stable": f"http://127.0.0.1:{port}"})])) as srv:
        resp = await get(srv.port, "/")
    assert_error(resp, 502)
    assert resp.body == b"502 Bad Gateway: upstream error\n"
    logged = [r.getMessage() for r in caplog.records if r.name == "splitproxy.exchange"]
    assert any(f"502 cannot connect to 127.0.0.1:{port}" in m for m in logged), logged


async def test_a_reset_is_a_generic_502_too() -> None:
    async with run_raw_upstream(respond_with(b"")) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            resp = await get(srv.port, "/")
    assert_error(resp, 502)
    assert resp.body == b"502 Bad Gateway: upstream error\n"


async def test_a_client_error_still_says_what_was_wrong() -> None:
    async with run_raw_upstream(respond_with(b"")) as up:
        cfg = proxy_config([route({"stable": up.url})], limits={"max_body": 10})
        async with run_proxy(cfg) as srv:
            resp = await get(srv.port, "/", method="POST", body=b"x" * 100)
    assert_error(resp, 413)
    assert b"larger than 10 bytes" in resp.body
