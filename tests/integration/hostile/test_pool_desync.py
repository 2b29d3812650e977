"""Threat: a broken upstream leaves a half-read connection in the pool, and the next client
on it gets someone else's bytes.

Rule: an upstream connection goes back to the pool only when the packet that ended the
response held nothing more; bytes past Content-Length, a body on a 204/304 or a HEAD answer,
a second response, or anything that arrives while idle close it (nginx: "upstream sent more
data than specified", and it does not keep the connection).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import raw_client
from tests.support.rawupstream import read_request, run_raw_upstream, sequence
from tests.support.waiting import WAIT

EVIL = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"


@pytest.mark.parametrize("first", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + EVIL,  # past Content-Length
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n" + EVIL,  # 204 with a "body"
    b"HTTP/1.1 304 Not Modified\r\n\r\n" + EVIL,
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokgarbage\r\n\r\n",
])
async def test_bytes_after_a_response_close_the_upstream_connection(first: bytes) -> None:
    async with run_raw_upstream(sequence(first)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with raw_client(srv.port) as c:
                resp = await c.request("GET", "/one")
                assert resp.status in (200, 204, 304)
                resp = await c.request("GET", "/two")
                assert (resp.status, resp.body) == (200, b"clean /two")
            assert up.connections == 2  # the dirty one was closed, a fresh one answered


async def test_bytes_arriving_while_idle_close_the_connection() -> None:
    count = [0]
    dropped = asyncio.Event()  # the proxy closed the connection the late bytes came on

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await _read(reader):
                count[0] += 1
                n = count[0]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst" if n == 1
                             else b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean")
                await writer.drain()
                if n == 1:
                    await asyncio.sleep(0.2)
                    writer.write(EVIL)  # late, while the connection sits in the pool
                    await writer.drain()
        finally:
            if count[0] == 1:
                dropped.set()

    async with run_raw_upstream(handler) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with raw_client(srv.port) as c:
                assert (await c.request("GET", "/1")).body == b"first"
                await asyncio.wait_for(dropped.wait(), WAIT)  # it saw the late bytes
                assert (await c.request("GET", "/2")).body == b"clean"
            assert up.connections == 2


async def test_head_answer_with_a_body_drops_the_body_and_the_connection() -> None:
    """nginx does not pass a body on a HEAD answer either."""
    head_reply = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
    async with run_raw_upstream(sequence(head_reply)) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            async with raw_client(srv.port) as c:
                resp = await c.request("HEAD", "/h")
                assert resp.status == 200 and resp.header("content-length") == "4"
                resp = await c.request("GET", "/next")  # would read "evil" if it had passed
                assert (resp.status, resp.body) == (200, b"clean /next")
            assert up.connections == 2


async def _read(reader: asyncio.StreamReader) -> bool:
    return await read_request(reader) is not None
