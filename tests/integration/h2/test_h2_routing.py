"""HTTP/2 downstream, end to end on real sockets: h2c by prior knowledge and TLS with ALPN h2,
routed by the same table as HTTP/1.1 (weights, pin, cookie) and counted per version."""

from __future__ import annotations

import json

from tests.support.configs import proxy_config, route
from tests.support.h2client import h2_client
from tests.support.proxy import proxied, run_proxy
from tests.support.upstream import run_upstreams


async def test_h2c_prior_knowledge_get_is_proxied_and_counted() -> None:
    async with proxied() as (up, srv), h2_client(srv.port) as client:
        resp = await client.get("/hello")
        assert resp.status == 200
        assert resp.body == b"stable"
        assert resp.headers["x-served-by"] == "stable"
        assert "x-request-id" in resp.headers
        assert "connection" not in resp.headers and "transfer-encoding" not in resp.headers
        assert srv.stats.get("shop", "stable").responses == {200: 1}


async def test_h2c_request_head_reaches_the_upstream_as_http11() -> None:
    async with proxied() as (up, srv), h2_client(srv.port) as client:
        resp = await client.get("/headers?x=1", [("x-a", "1"), ("cookie", "a=1"),
                                                 ("cookie", "b=2")])
        body = json.loads(resp.body)
    names = {k.lower(): v for k, v in body["headers"]}
    assert body["path"] == "/headers?x=1"
    assert names["host"] == "localhost"
    assert names["x-a"] == "1"
    assert names["cookie"] == "a=1; b=2"
    assert names["x-forwarded-proto"] == "http"


async def test_h2c_body_streams_both_ways() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: many windows' worth
    async with proxied() as (up, srv), h2_client(srv.port) as client:
        sid = client.request("POST", "/echo", [("content-length", str(len(payload)))],
                             body=None, end=False)
        # Sent within the windows the server grants, as a real client does.
        sent = 0
        while sent < len(payload):
            await client.wait_for(lambda: client.conn.local_flow_control_window(sid) > 0)
            n = min(client.conn.local_flow_control_window(sid),
                    client.conn.max_outbound_frame_size, len(payload) - sent)
            client.conn.send_data(sid, payload[sent:sent + n], end_stream=sent + n == len(payload))
            client.flush()
            sent += n
        resp = await client.response(sid)
    assert resp.status == 200
    assert resp.body == payload


async def test_many_streams_on_one_connection_are_split_by_weight() -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = proxy_config([route({n: u.url for n, u in ups.items()},
                                  {"stable": 90, "canary": 10})])
        async with run_proxy(cfg) as srv, h2_client(srv.port) as client:
            sids = [client.request("GET", "/") for _ in range(50)]
            bodies = [(await client.response(s)).body for s in sids]
            sids = [client.request("GET", "/") for _ in range(50)]
            bodies += [(await client.response(s)).body for s in sids]
    assert bodies.count(b"canary") == 10
    assert srv.stats.get("shop", "canary").responses == {200: 10}
    assert srv.stats.get("shop", "stable").responses == {200: 90}


STICKY = {"pin_header": "X-Splitproxy-Version", "cookie": "splitproxy-shop"}


async def test_h2_pin_header_and_sticky_cookie_choose_the_version() -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = proxy_config([route({n: u.url for n, u in ups.items()},
                                  {"stable": 100, "canary": 0}, sticky=STICKY)])
        async with run_proxy(cfg) as srv, h2_client(srv.port) as client:
            pinned = await client.get("/", [("x-splitproxy-version", "canary")])
            earned = await client.get("/")
            cookie = earned.headers["set-cookie"].split(";", 1)[0]
            kept = [await client.get("/", [("cookie", "other=1"), ("cookie", cookie)])
                    for _ in range(5)]
    assert pinned.body == b"canary"
    assert earned.body == b"stable" and cookie.startswith("splitproxy-shop=")
    assert {r.body for r in kept} == {b"stable"}
    assert all("set-cookie" not in r.headers for r in kept)  # already earned: not set again
    assert srv.stats.get("shop", "canary").responses == {200: 1}
    assert srv.stats.get("shop", "stable").responses == {200: 6}


async def test_h2_no_route_and_proxy_errors_are_answered_on_the_stream() -> None:
    cfg = proxy_config([route({"stable": "http://127.0.0.1:1"}, match={"path_prefix": "/api"})])
    async with run_proxy(cfg) as srv, h2_client(srv.port) as client:
        missing = await client.get("/nowhere")
        refused = await client.get("/api/x")
        again = await client.get("/nowhere")  # the connection goes on after errors
    assert missing.status == 404 and missing.headers["x-splitproxy-error"] == "1"
    assert refused.status == 502
    assert again.status == 404


async def test_h2_head_chunked_and_empty_answers_are_framed_right() -> None:
    async with proxied() as (up, srv), h2_client(srv.port) as client:
        head = await client.response(client.request("HEAD", "/download?size=5000"))
        chunked = await client.get("/chunked?n=5")
        empty = await client.get("/status/204")
        big = await client.get("/download?size=3000000&chunked=1")
    assert head.status == 200 and head.body == b""
    assert chunked.body == b"".join(b"part%d\n" % i for i in range(5))
    assert "transfer-encoding" not in chunked.headers
    assert empty.status == 204 and empty.body == b""
    assert big.status == 200 and len(big.body) == 3_000_000
