"""Endpoints added take traffic at once; endpoints removed drain: nothing new reaches them,
requests in flight finish, idle connections close. A rolling update loses no request."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from splitproxy.control.service import Service
from tests.support.configs import proxy_config, route
from tests.support.load import Load, served_by
from tests.support.rawhttp import raw_client
from tests.support.rawupstream import read_request, run_raw_upstream
from tests.support.service import generation, running_service, write_config
from tests.support.upstream import run_upstream
from tests.support.waiting import WAIT, wait_until


def one_version(*endpoints: str) -> dict[str, Any]:
    return proxy_config([route({"stable": list(endpoints)})])


def reloaded(svc: Service, n: int) -> bool:
    return generation(svc) == n


async def test_rolling_update_of_every_endpoint_loses_no_request(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        old = [await stack.enter_async_context(run_upstream(f"old{i}")) for i in range(2)]
        live = list(old)
        cfg = one_version(*(u.url for u in live))
        async with running_service(tmp_path, cfg) as (svc, path):
            load = Load.steady(svc.proxy_port, 8, gap=0.0)
            async with load.running():
                await load.more_answers(50)  # the load has started
                for i, retiring in enumerate(old):
                    # New pod up, config names it instead of the old one, old pod stopped.
                    new = await stack.enter_async_context(run_upstream(f"new{i}"))
                    live = [u for u in live if u is not retiring] + [new]
                    write_config(path, one_version(*(u.url for u in live)))
                    await wait_until(partial(reloaded, svc, i + 2), 2.0, "reload")
                    # Every client has had an answer to a request sent after the reload, so
                    # whatever was sent to the retiring endpoint before it has been answered.
                    since = time.time()
                    await wait_until(partial(load.every_client_since, since), WAIT,
                                     "every client to be answered after the reload")
                    seen = retiring.requests
                    await load.more_answers(100)
                    assert retiring.requests == seen, f"{retiring.name} still gets requests"
                    await retiring.stop()
                    await load.more_answers(100)
            assert load.failures == [], (len(load.failures), load.failures[:10])
            bad = [h for h in load.hits if h.status != 200]
            assert bad == [], (len(bad), bad[:10])
            served = Counter(h.served_by for h in load.answered())
            assert len(load.answered()) > 300, len(load.answered())
            assert set(served) == {"old0", "old1", "new0", "new1"}, served
            assert served["new0"] > 50 and served["new1"] > 50, served


async def test_added_endpoint_takes_traffic_at_once(tmp_path: Path) -> None:
    async with run_upstream("a") as a, run_upstream("b") as b:
        async with running_service(tmp_path, one_version(a.url)) as (svc, path):
            write_config(path, one_version(a.url, b.url))
            await wait_until(lambda: generation(svc) == 2, 2.0, "reload")
            async with raw_client(svc.proxy_port) as c:
                assert await served_by(c, 10) == {"a": 5, "b": 5}


async def test_in_flight_request_on_removed_endpoint_completes(tmp_path: Path) -> None:
    async with run_upstream("old") as old, run_upstream("new") as new:
        async with running_service(tmp_path, one_version(old.url)) as (svc, path):
            async with raw_client(svc.proxy_port) as slow_client:
                slow = asyncio.create_task(slow_client.request("GET", "/slow?delay=1"))
                await wait_until(lambda: old.in_flight == 1, WAIT, "slow request upstream")

                write_config(path, one_version(new.url))
                await wait_until(lambda: generation(svc) == 2, 2.0, "reload")
                async with raw_client(svc.proxy_port) as c:
                    assert await served_by(c, 5) == {"new": 5}
                assert not slow.done(), "the slow request ended early"

                resp = await asyncio.wait_for(slow, WAIT)
                assert resp.status == 200, resp.text
                assert resp.header("x-served-by") == "old"
                assert resp.text == "old"
            assert old.requests == 1
            endpoints = svc.controller.status().routes[0].versions["stable"].endpoints
            assert [(e.url, e.up, e.consecutive_failures, e.ejections) for e in endpoints] == [
                (new.url, True, 0, 0)]


async def test_removed_endpoint_idle_connections_are_closed(tmp_path: Path) -> None:
    closed = asyncio.Event()
    requests = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        try:
            while await read_request(reader) is not None:
                requests += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Served-By: old\r\n\r\nold")
                await writer.drain()
        finally:
            closed.set()  # EOF or reset: the proxy closed its pooled connection

    async with run_raw_upstream(keep_alive) as old, run_upstream("new") as new:
        async with running_service(tmp_path, one_version(old.url)) as (svc, path):
            async with raw_client(svc.proxy_port) as c:
                assert await served_by(c, 3) == {"old": 3}
            assert old.connections == 1  # reused: one pooled connection, idle now
            # Idle for a while, it is still pooled: the next request reuses it.
            await asyncio.sleep(0.2)
            async with raw_client(svc.proxy_port) as c:
                assert await served_by(c, 1) == {"old": 1}
            assert old.connections == 1 and not closed.is_set()

            write_config(path, one_version(new.url))
            await wait_until(lambda: generation(svc) == 2, 2.0, "reload")
            # Well before the 30 s upstream idle timeout: the removal itself closes it.
            await asyncio.wait_for(closed.wait(), 2.0)
            async with raw_client(svc.proxy_port) as c:
                assert await served_by(c, 3) == {"new": 3}
            assert requests == 4 and old.connections == 1
