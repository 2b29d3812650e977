"""Shadow traffic for HTTP/2 clients: a stream routed to an HTTP/1.1 version of a mirrored
route is copied and compared as an HTTP/1.1 request is (the same `MirroredExchange`)."""

from __future__ import annotations

from tests.integration.test_mirror import counts, json_reply, mirrored_route, serving, total
from tests.support.configs import proxy_config
from tests.support.h2client import h2_client
from tests.support.proxy import run_proxy
from tests.support.waiting import wait_until


async def test_http2_streams_to_http1_versions_are_mirrored_and_compared() -> None:
    compare = {"body": True, "ignore_headers": ["X-Served-By"],
               "ignore_json_fields": ["generated_at"]}
    async with serving(json_reply("primary")) as p, serving(json_reply("shadow")) as s:
        async with run_proxy(proxy_config([mirrored_route(p.url, s.url, compare=compare)])
                             ) as srv, h2_client(srv.port) as client:
            answers = [await client.get(f"/item/{i}") for i in range(3)]
            await wait_until(lambda: total(srv) == 3, what=lambda: f"counts {counts(srv)}")
    assert counts(srv) == {"match": 3}
    assert all(a.status == 200 and a.headers["x-served-by"] == "primary" for a in answers)
    assert [r.target for r in s.requests] == [f"/item/{i}" for i in range(3)]
    assert all(r.header("x-splitproxy-shadow") == "1" for r in s.requests)
