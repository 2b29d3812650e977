"""Either side going away mid-exchange: the other side learns of it, nothing is reused dirty."""

from __future__ import annotations

import asyncio

from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy, version_errors
from tests.support.rawhttp import build_request, get, parse_response_bytes, raw_client
from tests.support.rawupstream import RawHandler, read_request, respond_with, run_raw_upstream
from tests.support.waiting import wait_until

MiB = 1 << 20


async def test_upstream_dying_mid_body_closes_the_client_connection() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    async with run_raw_upstream(respond_with(head + b"x" * 100)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with raw_client(srv.port) as c:
                await c.send(build_request("GET", "/"))
                data = await c.read_until_close()  # fails on timeout if never closed
            resp = parse_response_bytes(data)
            if resp.status == 200:
                assert resp.header("content-length") == "1000"
                assert len(resp.body) < 1000, "a cut body must not look complete"
            else:
                assert resp.status == 502
            assert version_errors(srv), "an upstream that dies mid-body is a version error"


async def test_upstream_dying_mid_chunked_body_never_sends_the_last_chunk() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with run_raw_upstream(respond_with(head + b"5\r\nhello\r\n6\r\n wor")) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with raw_client(srv.port) as c:
                await c.send(build_request("GET", "/"))
                data = await c.read_until_close()
            resp = parse_response_bytes(data)
            if resp.status == 200:
                assert not resp.body.endswith(b"0\r\n\r\n"), data
                assert b"\r\n0\r\n" not in resp.body and not resp.body.startswith(b"0\r\n"), data
            else:
                assert resp.status == 502


def strict_upstream(errors: list[str], requests: list[str]) -> RawHandler:
    """A raw upstream that parses every request strictly and records what did not parse.

    /big answers with 4 MiB, slowly; everything else with "ok". A connection the proxy closes
    mid-request is fine; a reused connection with left-over bytes shows up in `errors`.
    """

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                req = await read_request(reader)
            except ValueError as exc:
                errors.append(str(exc))
                return
            except asyncio.IncompleteReadError:
                return
            if req is None:
                return
            requests.append(f"{req.method} {req.target} {len(req.body)}")
            if req.target == "/big":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (4 * MiB))
                for _ in range(64):
                    writer.write(b"b" * 65536)
                    await writer.drain()
                    await asyncio.sleep(0.005)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

    return handler


async def test_client_gone_mid_request_body_is_an_abort_and_upstream_not_reused_dirty() -> None:
    errors: list[str] = []
    requests: list[str] = []
    async with run_raw_upstream(strict_upstream(errors, requests)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            stats = srv.stats.get("shop", "stable")
            # warm the pool, so there is an idle connection that could be handed out dirty
            assert (await get(srv.port, "/warm")).body == b"ok"
            async with raw_client(srv.port) as c:
                await c.send(build_request("POST", "/upload", {"Content-Length": str(MiB)}))
                await c.send(b"u" * (100 * 1024))
                await asyncio.sleep(0.2)
            await wait_until(lambda: stats.client_aborts == 1, what="client_aborts == 1")
            for i in range(3):
                resp = await get(srv.port, f"/after/{i}")
                assert (resp.status, resp.body) == (200, b"ok")
            assert version_errors(srv) == {}
            assert stats.in_flight == 0
        assert errors == []
        assert requests[0] == "GET /warm 0"
        assert requests[-3:] == ["GET /after/0 0", "GET /after/1 0", "GET /after/2 0"]
        assert not any(r.startswith("POST /upload") for r in requests), "partial body completed?"


async def test_client_gone_mid_response_is_an_abort_and_upstream_not_reused_dirty() -> None:
    errors: list[str] = []
    requests: list[str] = []
    async with run_raw_upstream(strict_upstream(errors, requests)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            stats = srv.stats.get("shop", "stable")
            async with raw_client(srv.port) as c:
                await c.send(build_request("GET", "/big"))
                head = await c.read_head()
                assert head.status == 200
                await asyncio.wait_for(c.reader.readexactly(100_000), 5)
            await wait_until(lambda: stats.client_aborts == 1, what="client_aborts == 1")
            for i in range(3):
                resp = await get(srv.port, f"/after/{i}")
                assert (resp.status, resp.body) == (200, b"ok")
            assert version_errors(srv) == {}
            await wait_until(lambda: stats.in_flight == 0, what="in_flight == 0")
        assert errors == []
