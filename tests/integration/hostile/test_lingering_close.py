"""Threat (to the client's view): an error answered while the client is still sending is lost
to a reset, because the proxy closed with unread bytes in its receive buffer.

Rule: every answer that ends the connection closes it by lingering (nginx's lingering_close):
the answer is followed by a FIN, then what the client still sends is read and discarded until
it closes, 16 MiB arrive or 5 s pass. nginx 1.22 does the same (lingering_time 30 s,
lingering_timeout 5 s) and its client reads the 431/413.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.proxy import proxied
from tests.support.rawhttp import assert_error, parse_response_bytes


async def _send_all_then_read(port: int, head: bytes, endless: bytes) -> bytes:
    """Like most HTTP clients: writes the whole request (here 1 MiB past the head), and only
    then reads the answer. A reset under the writes fails the test."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for _ in range((1 << 20) // len(endless)):
            writer.write(endless)
            await asyncio.wait_for(writer.drain(), 10)
        got = b""
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            got += chunk
        return got
    finally:
        writer.close()


@pytest.mark.parametrize(("head", "endless", "status"), [
    # A head that never ends: 431 after limits.max_header.
    (b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ", b"a" * 16384, 431),
    # A chunked body over limits.max_body: 413 in the middle of the upload.
    (b"POST /sha256 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"4000\r\n" + b"b" * 0x4000 + b"\r\n", 413),
    # A body larger than max_body, announced: 413 before it is read.
    (b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n", b"c" * 16384, 413),
])
async def test_error_while_the_client_still_sends_reaches_the_client(
        head: bytes, endless: bytes, status: int) -> None:
    async with proxied(limits={"max_header": 65536, "max_body": 100000}) as (up, srv):
        for _ in range(3):
            got = await _send_all_then_read(srv.port, head, endless)
            assert_error(parse_response_bytes(got), status)
