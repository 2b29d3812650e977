"""Busy polling end to end (`performance.busy_poll`): a proxy that polls answers as one that
does not, polls while a request is on its way, and stops polling when traffic stops, so an idle
worker sleeps; a reload turns it off; by default it does what `auto` chose for this machine
and logs why."""

from __future__ import annotations

import asyncio
import logging

import pytest

from splitproxy.dataplane import cpuidle
from splitproxy.dataplane.http.busypoll import BusyPoll
from splitproxy.dataplane.server import ProxyServer
from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import raw_client
from tests.support.upstream import run_upstream


def pollers(srv: ProxyServer) -> tuple[BusyPoll | None, BusyPoll | None]:
    """The server's poller and the one its HTTP/2 upstream connections kick."""
    assert srv._h2pools is not None
    return srv.state.busy_poll, srv._h2pools.busy_poll


async def test_a_polling_proxy_answers_and_stops_polling_when_traffic_stops() -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], performance={"busy_poll": "200us"})
        async with run_proxy(cfg) as srv:
            busy, h2_busy = pollers(srv)
            assert busy is not None
            assert h2_busy is busy  # HTTP/2 upstream connections kick the same one
            async with raw_client(srv.port) as c:
                for i in range(20):
                    resp = await c.request("GET", f"/n{i}")
                    assert resp.status == 200 and resp.body.startswith(b"stable")
            assert busy.turns > 0  # reads of both sides kicked it
            # The window is 200 us: well after it, no turn is spent polling. Every check
            # waits the loop's own sleeps, so a busy machine only makes the turns rarer.
            await asyncio.sleep(0.05)
            settled = busy.turns
            await asyncio.sleep(0.2)
            assert busy.turns == settled

            srv.reconfigure(type(srv.config).model_validate(
                proxy_config([route({"stable": up.url})], performance={"busy_poll": "0s"})),
                srv.runtime.table)
            assert pollers(srv) == (None, None)
            async with raw_client(srv.port) as c:
                assert (await c.request("GET", "/off")).status == 200
            assert busy.turns == settled


async def test_by_default_it_polls_as_this_machine_allows_and_says_why(
        caplog: pytest.LogCaptureFixture) -> None:
    expected = cpuidle.choose("auto")
    caplog.set_level(logging.INFO, logger="splitproxy.dataplane.server")
    async with run_upstream("stable") as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            busy = srv.state.busy_poll
            assert (busy.window if busy is not None else 0.0) == expected.window
            async with raw_client(srv.port) as c:
                assert (await c.request("GET", "/auto")).status == 200
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("busy polling")]
    window = f"{expected.window * 1e6:g}us" if expected.window else "off"
    assert said == [f"busy polling: {window} ({expected.reason})"]
