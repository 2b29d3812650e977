"""Bodies stream through in both directions with bounded memory, Content-Length and chunked."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from tests.support.memory import peak_rss
from tests.support.proxy import proxied
from tests.support.rawhttp import RawClient, build_request, raw_client
from tests.support.upstream import BLOCK

MiB = 1 << 20
BIG = 64 * MiB
# The proxy runs in this process, so its buffers show up in our RSS. Holding the body would
# cost >= 64 MiB; streaming costs a few socket-sized buffers.
MAX_GROWTH = 32 * MiB
STALL = 0.3  # the receiving side pauses this long first: without flow control the proxy would
#              buffer everything the sender manages to push meanwhile


def expected_sha256(size: int) -> str:
    h = hashlib.sha256()
    for _ in range(size // len(BLOCK)):
        h.update(BLOCK)
    return h.hexdigest()


async def send_body(c: RawClient, size: int, chunked: bool) -> None:
    for _ in range(size // len(BLOCK)):
        if chunked:
            await c.send(b"%x\r\n" % len(BLOCK) + BLOCK + b"\r\n")
        else:
            await c.send(BLOCK)
    if chunked:
        await c.send(b"0\r\n\r\n")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_large_upload_streams_intact_with_bounded_memory(chunked: bool) -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(BIG)}
            async with peak_rss() as rss:
                await c.send(build_request("POST", f"/sha256?stall={STALL}", framing))
                await asyncio.wait_for(send_body(c, BIG, chunked), 30)
                resp = await c.read_response(timeout=30)
        assert resp.status == 200, resp.text
        assert resp.json() == {"sha256": expected_sha256(BIG), "size": BIG}
        growth = rss[1] - rss[0]
        assert growth < MAX_GROWTH, f"RSS grew {growth / MiB:.1f} MiB while streaming 64 MiB up"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_large_download_streams_intact_with_bounded_memory(chunked: bool) -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            flag = "&chunked=1" if chunked else ""
            async with peak_rss() as rss:
                await c.send(build_request("GET", f"/download?size={BIG}{flag}"))
                head = await c.read_head()
                assert head.status == 200
                if chunked:
                    assert (head.header("transfer-encoding") or "").lower() == "chunked"
                    assert head.header("content-length") is None
                else:
                    assert head.header("content-length") == str(BIG)
                await asyncio.sleep(STALL)
                h = hashlib.sha256()
                size = 0
                async for part in c.iter_body(head, timeout=30):
                    h.update(part)
                    size += len(part)
            assert size == BIG
            assert h.hexdigest() == expected_sha256(BIG)
            # the connection is still good for the next request
            assert (await c.request("GET", "/")).body == b"stable"
        growth = rss[1] - rss[0]
        assert growth < MAX_GROWTH, f"RSS grew {growth / MiB:.1f} MiB while streaming 64 MiB down"


async def test_chunked_response_is_forwarded_as_it_arrives() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            loop = asyncio.get_running_loop()
            start = loop.time()
            await c.send(build_request("GET", "/chunked?n=4&delay=0.25"))
            head = await c.read_head()
            assert head.status == 200
            assert (head.header("transfer-encoding") or "").lower() == "chunked"
            parts = []
            first_at = None
            async for part in c.iter_body(head):
                first_at = first_at or loop.time() - start
                parts.append(part)
        assert b"".join(parts) == b"part0\npart1\npart2\npart3\n"
        # the upstream needs 0.75 s for all four; the first part must not wait for the last
        assert first_at is not None and first_at < 0.5, first_at


async def test_chunked_both_ways() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            chunks = [b"a" * 10, b"b" * 1000, b"c" * 70000, b"d"]
            encoded = b"".join(b"%x\r\n%s\r\n" % (len(x), x) for x in chunks) + b"0\r\n\r\n"
            resp = await c.request("POST", "/echo", {"Transfer-Encoding": "chunked"}, encoded)
            assert resp.status == 200
            assert (resp.header("transfer-encoding") or "").lower() == "chunked"
            assert resp.body == b"".join(chunks)
            # chunk extensions and odd hex case are legal and forwarded as the same body
            resp = await c.request(
                "POST",
                "/echo",
                {"Transfer-Encoding": "chunked"},
                b"A;ext=1\r\n0123456789\r\n0\r\n\r\n",
            )
            assert resp.body == b"0123456789"


async def test_content_length_upload_echoed_with_content_length() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            body = bytes(range(256)) * 1000
            resp = await c.request("POST", "/echo", body=body)
        assert resp.status == 200
        assert resp.header("content-length") == str(len(body))
        assert resp.body == body
