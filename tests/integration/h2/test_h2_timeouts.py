"""Timeouts per stream: a stream whose body stops is answered 408, its connection's other
streams go on (HTTP/1.1's client_body timeout, per stream)."""

from __future__ import annotations

from tests.support.configs import proxy_config, route
from tests.support.h2client import h2_client
from tests.support.proxy import run_proxy
from tests.support.upstream import run_upstream


async def test_a_stalled_request_body_gets_408_and_the_connection_goes_on() -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], timeouts={"client_body": "0.5s"})
        async with run_proxy(cfg) as srv, h2_client(srv.port) as client:
            stalled = client.request("POST", "/echo", [("content-length", "10")],
                                     body=b"12345", end=False)
            answer = await client.response(stalled)
            other = await client.get("/")
    assert answer.status == 408
    assert other.status == 200
    assert srv.stats.bad_requests == 1
