"""One port, two protocols: the HTTP/2 preface hands a connection to HTTP/2 (whole or in
pieces), anything else is HTTP/1.1; `Upgrade: h2c` on HTTP/1.1 is ignored, never passed to
the upstream (whose 101 would make a blind tunnel of the connection)."""

from __future__ import annotations

import asyncio

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ResponseReceived

from splitproxy.dataplane.http.downstream import H2_PREFACE
from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import raw_client
from tests.support.rawupstream import RawHandler, answer, read_request, run_raw_upstream
from tests.support.waiting import WAIT


def switching_upstream(seen: list[list[tuple[str, str]]]) -> RawHandler:
    """Answers 101 to any request that asks to upgrade (as an h2c-capable server would), else
    200: a proxy that passed `Upgrade: h2c` on would tunnel blindly."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            seen.append(req.headers)
            if req.header("upgrade") is not None:
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                             b"Upgrade: h2c\r\n\r\n")
                await writer.drain()
                await reader.read()
                return
            writer.write(answer(b"ok " + req.target.encode()))
            await writer.drain()

    return handler


async def test_upgrade_h2c_is_ignored_and_never_reaches_the_upstream() -> None:
    seen: list[list[tuple[str, str]]] = []
    async with run_raw_upstream(switching_upstream(seen)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv, \
                raw_client(srv.port) as client:
            await client.send(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings"
                              b"\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
            first = await client.read_response()
            second = await client.request("GET", "/b")  # still HTTP/1.1, same connection
    assert first.status == 200 and first.body == b"ok /a"
    assert second.status == 200 and second.body == b"ok /b"
    names = {k.lower() for k, _ in seen[0]}
    assert not names & {"upgrade", "http2-settings"}
    assert ("connection", "upgrade") not in [(k.lower(), v.lower()) for k, v in seen[0]]


async def test_upgrade_h2c_with_a_body_is_refused() -> None:
    seen: list[list[tuple[str, str]]] = []
    async with run_raw_upstream(switching_upstream(seen)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv, \
                raw_client(srv.port) as client:
            await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                              b"Upgrade: h2c\r\nContent-Length: 3\r\n\r\nabc")
            resp = await client.read_response()
    assert resp.status == 400
    assert seen == []


async def test_a_preface_in_pieces_is_still_http2() -> None:
    seen: list[list[tuple[str, str]]] = []
    async with run_raw_upstream(switching_upstream(seen)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
            conn.initiate_connection()
            conn.send_headers(1, [(":method", "GET"), (":scheme", "http"),
                                  (":authority", "x"), (":path", "/p")], end_stream=True)
            data = conn.data_to_send()
            assert data.startswith(H2_PREFACE)
            for piece in (data[:3], data[3:10], data[10:30], data[30:]):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.01)  # separate packets, as a slow client sends them
            status = None
            while status is None:
                chunk = await asyncio.wait_for(reader.read(65536), WAIT)
                assert chunk
                for event in conn.receive_data(chunk):
                    if isinstance(event, ResponseReceived):
                        status = dict(event.headers or [])[b":status"]
                writer.write(conn.data_to_send())
            writer.close()
    assert status == b"200"
    assert len(seen) == 1


async def test_a_request_that_starts_with_pri_but_is_no_preface_is_a_400() -> None:
    seen: list[list[tuple[str, str]]] = []
    async with run_raw_upstream(switching_upstream(seen)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv, \
                raw_client(srv.port) as client:
            await client.send(b"PRI /x HTTP/1.1\r\nHost: x\r\n\r\n")
            resp = await client.read_response()
    # llhttp knows the preface: a PRI request that is not one is malformed HTTP/1.1.
    assert resp.status == 400 and b"Preface" in resp.body
    assert seen == []
