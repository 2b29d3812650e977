"""Endpoints added take traffic at once; endpoints removed drain: nothing new reaches them,
requests in flight finish, idle connections close. A rolling update loses no request."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from splitproxy.control.service import Service

from .conftest import (
    WAIT,
    Upstream,
    proxy_config,
    raw_client,
    read_request,
    route,
    run_raw_upstream,
    run_upstream,
    running_service,
    served_by,
    wait_until,
    write_config,
)


def one_version(*endpoints: str) -> dict[str, Any]:
    return proxy_config([route({"stable": list(endpoints)})])


def generation(svc: Service) -> int:
    return int(svc.controller.status().config.generation)


@contextlib.asynccontextmanager
async def stoppable_upstream(
    name: str,
) -> AsyncIterator[tuple[Upstream, Callable[[], Awaitable[None]]]]:
    """An upstream and a `stop()` that shuts it down gracefully (aiohttp's runner.cleanup())
    before the block ends, as a terminating pod does; stopped on exit if still running."""
    cm = run_upstream(name)
    up = await cm.__aenter__()
    stopped = False

    async def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            await cm.__aexit__(None, None, None)

    try:
        yield up, stop
    finally:
        await stop()


class SteadyLoad:
    """`clients` concurrent aiohttp tasks looping GETs through the proxy until the block ends."""

    def __init__(self, port: int, clients: int = 8) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.clients = clients
        self.ok = 0
        self.failures: list[str] = []
        self.served_by: Counter[str] = Counter()

    async def _loop(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with session.get(self.url) as resp:
                    body = await resp.text()
                    if resp.status == 200:
                        self.ok += 1
                        self.served_by[resp.headers.get("X-Served-By", "?")] += 1
                    else:
                        self.failures.append(f"{resp.status} {body.strip()}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(repr(exc))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SteadyLoad]:
        stop = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = [asyncio.create_task(self._loop(session, stop)) for _ in range(self.clients)]
            try:
                yield self
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), WAIT)


async def test_rolling_update_of_every_endpoint_loses_no_request(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        old = [await stack.enter_async_context(stoppable_upstream(f"old{i}")) for i in range(2)]
        live = [up for up, _ in old]
        cfg = one_version(*(u.url for u in live))
        async with running_service(tmp_path, cfg) as (svc, path):
            load = SteadyLoad(svc.proxy_port)
            async with load.running():
                await wait_until(lambda: load.ok >= 50, WAIT, "load to start")
                for i, (retiring, stop) in enumerate(old):
                    # New pod up, config names it instead of the old one, old pod stopped.
                    new, _ = await stack.enter_async_context(stoppable_upstream(f"new{i}"))
                    live = [u for u in live if u is not retiring] + [new]
                    write_config(path, one_version(*(u.url for u in live)))
                    await wait_until(lambda n=i + 2: generation(svc) == n, 2.0, "reload")
                    await asyncio.sleep(0.5)
                    seen = retiring.requests
                    await asyncio.sleep(0.1)
                    assert retiring.requests == seen, f"{retiring.name} still gets requests"
                    await stop()
                    ok = load.ok
                    await wait_until(lambda ok=ok: load.ok >= ok + 100, WAIT, "more traffic")
            assert load.failures == [], (len(load.failures), load.failures[:10])
            assert load.ok > 300, load.ok
            assert set(load.served_by) == {"old0", "old1", "new0", "new1"}, load.served_by
            assert load.served_by["new0"] > 50 and load.served_by["new1"] > 50, load.served_by


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
            assert [e.model_dump() for e in endpoints] == [
                {"url": new.url, "up": True, "consecutive_failures": 0, "ejections": 0}
            ]


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
            await asyncio.sleep(0.2)
            assert not closed.is_set()

            write_config(path, one_version(new.url))
            await wait_until(lambda: generation(svc) == 2, 2.0, "reload")
            # Well before the 30 s upstream idle timeout: the removal itself closes it.
            await asyncio.wait_for(closed.wait(), 2.0)
            async with raw_client(svc.proxy_port) as c:
                assert await served_by(c, 3) == {"new": 3}
            assert requests == 3 and old.connections == 1
