"""Shadow traffic for HTTP/2 clients: a stream routed to an HTTP/1.1 version of a mirrored
route is copied and compared as an HTTP/1.1 request is (the same `MirroredExchange`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tests.support.configs import proxy_config, route
from tests.support.h2client import h2_client
from tests.support.proxy import run_proxy
from tests.support.rawupstream import RawRequest, read_request, run_raw_upstream
from tests.support.waiting import wait_until


async def test_http2_streams_to_http1_versions_are_mirrored_and_compared() -> None:
    seen: dict[str, list[RawRequest]] = {"primary": [], "shadow": []}

    def upstream(who: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                       Awaitable[None]]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (req := await read_request(reader)) is not None:
                seen[who].append(req)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Served-By: "
                             + who.encode() + b"\r\n\r\nok")
                await writer.drain()
        return handler

    async with run_raw_upstream(upstream("primary")) as p, \
            run_raw_upstream(upstream("shadow")) as s:
        r = route({"primary": p.url, "shadow": s.url}, {"primary": 100, "shadow": 0})
        r["mirror"] = {"to": "shadow", "compare": {"body": True,
                                                  "ignore_headers": ["X-Served-By"]}}
        async with run_proxy(proxy_config([r])) as srv, h2_client(srv.port) as client:
            answers = [await client.get(f"/item/{i}") for i in range(3)]
            await wait_until(lambda: sum(srv.stats.shadow.values()) == 3,
                             what=lambda: f"counts {srv.stats.shadow}")
    assert {result for (_, _, result) in srv.stats.shadow} == {"match"}
    assert all(a.status == 200 and a.headers["x-served-by"] == "primary" for a in answers)
    assert [r.target for r in seen["shadow"]] == [f"/item/{i}" for i in range(3)]
    assert all(r.header("x-splitproxy-shadow") == "1" for r in seen["shadow"])
    assert len(seen["primary"]) == 3
