"""Connections: keep-alive on both sides, pipelining, bodiless responses, 100-continue."""

from __future__ import annotations

from tests.support.proxy import proxied
from tests.support.rawhttp import assert_error, build_request, raw_client


async def test_keepalive_on_both_sides() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            for i in range(50):
                resp = await c.request("GET", f"/n/{i}")
                assert resp.status == 200
                assert resp.header("x-path") == f"/n/{i}"
                assert (resp.header("connection") or "").lower() != "close"
        assert up.requests == 50
        # sequential requests reuse the pooled upstream connection
        assert len(up.peers) <= 2, up.peers


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            # the first is the slowest: answering in completion order would be visible
            await c.send(
                build_request("GET", "/slow?delay=0.3")
                + build_request("GET", "/second")
                + build_request("GET", "/third")
            )
            first = await c.read_response()
            second = await c.read_response()
            third = await c.read_response()
            assert (first.status, first.body) == (200, b"stable")
            assert second.header("x-path") == "/second"
            assert third.header("x-path") == "/third"
            # and the connection is still good afterwards
            assert (await c.request("GET", "/fourth")).header("x-path") == "/fourth"


async def test_pipelined_posts_with_bodies_stay_framed() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            await c.send(
                build_request("POST", "/echo", body=b"one")
                + build_request(
                    "POST", "/echo", {"Transfer-Encoding": "chunked"}, b"3\r\ntwo\r\n0\r\n\r\n"
                )
                + build_request("POST", "/echo", body=b"three")
            )
            bodies = [(await c.read_response()).body for _ in range(3)]
        assert bodies == [b"one", b"two", b"three"]


async def test_head_204_304_have_no_body_and_keep_the_connection() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            for method, path, status in [
                ("HEAD", "/", 200),
                ("GET", "/status/204", 204),
                ("GET", "/status/304", 304),
                ("HEAD", "/download?size=100000", 200),
            ]:
                await c.send(build_request(method, path))
                head = await c.read_head()
                assert head.status == status, (method, path)
                # a stray body byte would corrupt the next response's status line
                nxt = await c.request("GET", "/after")
                assert nxt.status == 200, (method, path)
                assert nxt.body == b"stable", (method, path)
            # nothing left over on the wire: the connection still serves a request, whole
            last = await c.request("GET", "/last")
            assert (last.status, last.body) == (200, b"stable")
            assert c.reader._buffer == b""  # type: ignore[attr-defined]


async def test_head_keeps_content_length_of_the_get() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            await c.send(build_request("HEAD", "/download?size=100000"))
            head = await c.read_head()
            assert head.header("content-length") == "100000"
            assert (await c.request("GET", "/")).body == b"stable"


async def test_expect_100_continue() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            body = b"hello world"
            await c.send(
                build_request("POST", "/echo", {"Expect": "100-continue", "Content-Length": "11"})
            )
            interim = await c.read_head()
            assert (interim.status, interim.reason) == (100, "Continue")
            await c.send(body)
            resp = await c.read_response()
            assert resp.status == 200
            assert resp.body == body
            # usable afterwards
            assert (await c.request("GET", "/")).body == b"stable"


async def test_unknown_expect_is_417() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            await c.send(
                build_request("POST", "/echo", {"Expect": "something-else", "Content-Length": "0"})
            )
            resp = await c.read_response()
        assert_error(resp, 417)
        assert up.requests == 0
