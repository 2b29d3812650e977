"""Busy polling end to end (`performance.busy_poll`): a proxy that polls answers as one that
does not, polls while a request is on its way, and stops polling when traffic stops, so an idle
worker sleeps; a reload turns it off; by default it does what `auto` chose for this machine
and logs why."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from splitproxy.dataplane import cpuidle
from splitproxy.dataplane.http.busypoll import CLIENT, MISSES, UPSTREAM, BusyPoll
from splitproxy.dataplane.server import ProxyServer
from tests.support.configs import proxy_config, route
from tests.support.h2client import h2_client
from tests.support.proxy import run_proxy
from tests.support.rawhttp import raw_client
from tests.support.upstream import run_upstream
from tests.support.waiting import WAIT, wait_until


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


async def test_both_directions_of_a_tunnel_kick_it() -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], performance={"busy_poll": "200us"})
        async with run_proxy(cfg) as srv, aiohttp.ClientSession() as session:
            busy = srv.state.busy_poll
            assert busy is not None
            async with session.ws_connect(f"http://127.0.0.1:{srv.port}/ws") as ws:
                # Both sides off: each read of a side then counts in its `_skipped`, which a
                # poll (and so a timer) would not show apart.
                busy._misses[CLIENT] = busy._misses[UPSTREAM] = MISSES
                before = list(busy._skipped)
                for i in range(3):
                    await ws.send_str(f"m{i}")
                    assert (await ws.receive(timeout=5)).data == f"m{i}"
                after = list(busy._skipped)
                await ws.close()
    # Each echo was read at least once from the upstream, each message from the client.
    assert all(a - b >= 3 for a, b in zip(after, before, strict=True)), (before, after)


async def test_http2_streams_in_flight_count_as_load_and_all_come_back() -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], performance={"busy_poll": "200us"})
        async with run_proxy(cfg) as srv:
            writes = srv.state.writes
            async with h2_client(srv.port) as client:
                # Held long enough to be seen in flight on a busy machine.
                first = client.request("GET", "/slow?delay=1")
                second = client.request("GET", "/slow?delay=1")
                await wait_until(lambda: writes.h2_busy == 2, WAIT, "two streams in flight")
                assert writes.loaded()  # so a read starts no poll: the loop is busy anyway
                assert (await client.response(first)).status == 200
                assert (await client.response(second)).status == 200
                await wait_until(lambda: writes.h2_busy == 0, WAIT, "both streams done")
                assert not writes.loaded()
                # A stream the client resets, and one cut by the connection's end.
                reset = client.request("GET", "/slow?delay=2")
                client.request("GET", "/slow?delay=2")
                await wait_until(lambda: writes.h2_busy == 2, WAIT, "two more in flight")
                client.conn.reset_stream(reset)
                client.flush()
                await wait_until(lambda: writes.h2_busy == 1, WAIT, "the reset one gone")
            await wait_until(lambda: writes.h2_busy == 0, WAIT, "the connection's gone")
