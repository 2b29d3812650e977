"""Header handling: hop-by-hop removal both ways, forwarding headers, Host, repeated headers."""

from __future__ import annotations

import asyncio

from tests.support.configs import proxy_config, route
from tests.support.proxy import proxied, run_proxy
from tests.support.rawhttp import build_request, get, raw_client
from tests.support.rawupstream import read_request, run_raw_upstream

HOP_BY_HOP = ("keep-alive", "proxy-connection", "te", "trailer", "upgrade", "transfer-encoding")


def names(pairs: list[list[str]] | list[tuple[str, str]]) -> list[str]:
    return [k.lower() for k, _ in pairs]


def values(pairs: list[list[str]], name: str) -> list[str]:
    return [v for k, v in pairs if k.lower() == name]


async def test_hop_by_hop_request_headers_are_removed() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            resp = await c.request(
                "GET",
                "/headers",
                [
                    ("Connection", "close, X-Foo"),
                    ("Keep-Alive", "timeout=5"),
                    ("Proxy-Connection", "keep-alive"),
                    ("TE", "trailers"),
                    ("Trailer", "X-Checksum"),
                    ("Upgrade", "h2c"),
                    ("X-Foo", "secret"),
                    ("X-Keep", "yes"),
                ],
            )
        assert resp.status == 200
        seen = resp.json()["headers"]
        for name in (*HOP_BY_HOP, "x-foo"):
            assert name not in names(seen), (name, seen)
        # the proxy may speak its own Connection to the upstream, never forward the client's
        for v in values(seen, "connection"):
            assert v.lower() in ("keep-alive", "close"), seen
        assert values(seen, "x-keep") == ["yes"]


async def test_headers_named_in_connection_are_removed_on_keepalive_too() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            hdrs = [
                ("Connection", "X-A, keep-alive"),
                ("Connection", "x-b"),
                ("X-A", "1"),
                ("X-B", "2"),
            ]
            resp = await c.request("GET", "/headers", hdrs)
            seen = resp.json()["headers"]
            assert "x-a" not in names(seen) and "x-b" not in names(seen), seen
            # and the connection is kept
            assert (await c.request("GET", "/")).status == 200


async def test_hop_by_hop_response_headers_are_removed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            writer.write(
                b"HTTP/1.1 200 OK\r\n"
                b"Content-Length: 2\r\n"
                b"Connection: keep-alive, X-Bar\r\n"
                b"Keep-Alive: timeout=5, max=100\r\n"
                b"Proxy-Connection: keep-alive\r\n"
                b"TE: trailers\r\n"
                b"Trailer: X-Checksum\r\n"
                b"Upgrade: h2c\r\n"
                b"X-Bar: secret\r\n"
                b"X-Keep: yes\r\n"
                b"\r\nok"
            )

    async with (
        run_raw_upstream(handler) as up,
        run_proxy(proxy_config([route({"stable": up.url})])) as srv,
    ):
        async with raw_client(srv.port) as c:
            resp = await c.request("GET", "/")
            assert resp.status == 200
            assert resp.body == b"ok"
            got = names(resp.headers)
            for name in (*HOP_BY_HOP, "x-bar"):
                assert name not in got, (name, resp.headers)
            for v in resp.header_all("connection"):
                assert v.lower() in ("keep-alive", "close"), resp.headers
            assert resp.header_all("x-keep") == ["yes"]
            # still usable
            assert (await c.request("GET", "/")).body == b"ok"


async def test_each_answer_on_a_reused_upstream_connection_has_its_own_reason() -> None:
    # The reason phrase may be absent; a status line without one must not inherit the last
    # answer's on a reused connection (it did: "HTTP/1.1 404 OK").
    answers = [b"HTTP/1.1 200 Fine\r\n", b"HTTP/1.1 404\r\n", b"HTTP/1.1 410 \r\n",
               b"HTTP/1.0 503 Busy Now\r\n"]
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for status_line in answers:
            if not await read_request(reader):
                return
            extra = b"Connection: keep-alive\r\n" if status_line.startswith(b"HTTP/1.0") else b""
            writer.write(status_line + extra + b"Content-Length: 2\r\n\r\nok")

    async with (
        run_raw_upstream(handler) as up,
        run_proxy(proxy_config([route({"stable": up.url})])) as srv,
    ):
        async with raw_client(srv.port) as c:
            got = [(r.status, r.reason) for r in [await c.request("GET", "/") for _ in answers]]
    assert got == [(200, "Fine"), (404, ""), (410, ""), (503, "Busy Now")]
    assert connections == 1


async def test_chunked_transfer_encoding_from_upstream_is_reframed_not_duplicated() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )

    async with (
        run_raw_upstream(handler) as up,
        run_proxy(proxy_config([route({"stable": up.url})])) as srv,
    ):
        async with raw_client(srv.port) as c:
            resp = await c.request("GET", "/")
            assert resp.body == b"hello world"
            # exactly one framing: one Transfer-Encoding header or a Content-Length, not both
            te = resp.header_all("transfer-encoding")
            cl = resp.header_all("content-length")
            assert (te == ["chunked"] and not cl) or (len(cl) == 1 and not te), resp.headers
            assert (await c.request("GET", "/")).body == b"hello world"


async def test_forwarding_headers_are_added() -> None:
    async with proxied() as (up, srv):
        resp = await get(srv.port, "/headers", host="shop.example.com:8080")
    seen = resp.json()["headers"]
    assert values(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert values(seen, "x-forwarded-proto") == ["http"]
    assert values(seen, "x-forwarded-host") == ["shop.example.com:8080"]
    # Host is passed unchanged, not rewritten to the endpoint's address
    assert values(seen, "host") == ["shop.example.com:8080"]


async def test_x_forwarded_for_is_appended_to() -> None:
    async with proxied() as (up, srv):
        resp = await get(srv.port, "/headers", headers={"X-Forwarded-For": "1.2.3.4"})
    seen = resp.json()["headers"]
    assert values(seen, "x-forwarded-for") == ["1.2.3.4, 127.0.0.1"]


async def test_request_headers_keep_order_and_repeats() -> None:
    async with proxied() as (up, srv):
        hdrs = [("X-Multi", "1"), ("X-Other", "o"), ("X-Multi", "2"), ("X-Multi", "3")]
        resp = await get(srv.port, "/headers", headers=hdrs)
    seen = resp.json()["headers"]
    assert values(seen, "x-multi") == ["1", "2", "3"]


async def test_repeated_set_cookie_keeps_order() -> None:
    async with proxied() as (up, srv):
        resp = await get(srv.port, "/cookies")
    assert resp.status == 200
    assert resp.header_all("set-cookie") == ["a=1", "b=2", "c=3"]


async def test_request_line_target_and_method_pass_unchanged() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            await c.send(build_request("PATCH", "/headers?b=2&a=1&a=%20x"))
            resp = await c.read_response()
    body = resp.json()
    assert body["method"] == "PATCH"
    assert body["path"] == "/headers?b=2&a=1&a=%20x"
