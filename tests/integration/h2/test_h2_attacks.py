"""The known HTTP/2 attacks, each refused cheaply by a raw client (the `h2` library on a real
socket, frames written by hand where a polite library refuses), while another connection,
or another stream of the same connection, keeps being served."""

from __future__ import annotations

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
)

from splitproxy.dataplane.h2 import limits
from tests.support.h2client import H2Client, H2Response, h2_client
from tests.support.proxy import proxied
from tests.support.upstream import Upstream


async def goaway_code(client: H2Client) -> int:
    await client.wait_for(lambda: client.goaway is not None)
    assert client.goaway is not None
    await client.wait_closed()
    return int(client.goaway.error_code or 0)


async def still_served(up: Upstream, port: int) -> None:
    async with h2_client(port) as other:
        resp = await other.get("/")
    assert resp.status == 200 and resp.body == up.name.encode()


def headers_block(client: H2Client, sid: int, path: str = "/") -> bytes:
    return client.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                       (b":authority", b"localhost"), (b":path", path.encode())])


async def test_rapid_reset_ends_the_connection_with_enhance_your_calm() -> None:
    async with proxied() as (up, srv), h2_client(srv.port) as client, \
            h2_client(srv.port) as bystander:
        slow = bystander.request("GET", "/slow?delay=0.5")
        for _ in range(limits.MIN_RESETS * 3):  # open and cancel at once (CVE-2023-44487)
            sid = client.request("GET", "/slow?delay=5")
            client.conn.reset_stream(sid, ErrorCodes.CANCEL)
            client.flush()
            if client.closed:
                break
        code = await goaway_code(client)
        answered = await bystander.response(slow)
        await still_served(up, srv.port)
    assert code == ErrorCodes.ENHANCE_YOUR_CALM
    assert answered.status == 200  # the other connection's stream in flight finished
    assert srv.stats.get("shop", "stable").in_flight == 0


async def test_a_client_cancelling_some_calls_is_not_rapid_reset() -> None:
    async with proxied() as (up, srv), h2_client(srv.port) as client:
        for i in range(limits.MIN_RESETS * 2):
            sid = client.request("GET", "/")
            if i % 3 == 0:
                client.conn.reset_stream(sid, ErrorCodes.CANCEL)
                client.flush()
            else:
                assert (await client.response(sid)).status == 200
        last = await client.get("/")
    assert last.status == 200 and client.goaway is None


async def test_continuation_flood_is_refused() -> None:
    async with proxied() as (up, srv), h2_client(srv.port) as client:
        first = HeadersFrame(1)
        first.data = headers_block(client, 1)
        frames = [first.serialize()]
        for _ in range(200):  # never END_HEADERS: the block would grow for ever
            cont = ContinuationFrame(1)
            cont.data = b"\x00" * 1000
            frames.append(cont.serialize())
        client.send_raw(b"".join(frames))
        code = await goaway_code(client)
        await still_served(up, srv.port)
    assert code != ErrorCodes.NO_ERROR
    assert up.requests == 1  # only the bystander's request


@pytest.mark.parametrize(("frame", "count"), [
    (SettingsFrame(0), limits.MAX_SETTINGS + 50),
    (PingFrame(0), limits.MAX_PINGS + 50),
])
async def test_settings_and_ping_floods_end_the_connection(frame: SettingsFrame | PingFrame,
                                                          count: int) -> None:
    async with proxied() as (up, srv), h2_client(srv.port) as client:
        ok = await client.get("/")  # a working connection first
        client.send_raw(frame.serialize() * count)
        code = await goaway_code(client)
        await still_served(up, srv.port)
    assert ok.status == 200
    assert code == ErrorCodes.ENHANCE_YOUR_CALM


async def test_hpack_bomb_passes_no_header_list_larger_than_max_header() -> None:
    async with proxied(limits={"max_header": 16384}) as (up, srv), \
            h2_client(srv.port) as client:
        # One 4000-byte field in the dynamic table, then referenced by one byte each:
        # a ~4 KiB block that would decode to ~400 KiB.
        client.request("GET", "/", [("x-bomb", "a" * 4000)] * 100)
        code = await goaway_code(client)
        await still_served(up, srv.port)
    assert code == ErrorCodes.ENHANCE_YOUR_CALM
    assert up.requests == 1


SMUGGLING = [
    pytest.param([("x-a", "1\r\nx-injected: 2")], id="CRLF-in-value"),
    pytest.param([("x-a", "1\nx-injected: 2")], id="LF-in-value"),
    pytest.param([("x-a", "1\x00")], id="NUL-in-value"),
    pytest.param([("X-Upper", "1")], id="uppercase-name"),
    pytest.param([("x a", "1")], id="space-in-name"),
    pytest.param([("transfer-encoding", "chunked")], id="transfer-encoding"),
    pytest.param([("connection", "keep-alive")], id="connection"),
    pytest.param([("keep-alive", "timeout=5")], id="keep-alive"),
    pytest.param([("upgrade", "websocket")], id="upgrade"),
    pytest.param([("proxy-connection", "keep-alive")], id="proxy-connection"),
    pytest.param([("te", "gzip")], id="te-not-trailers"),
    pytest.param([(":foo", "bar")], id="unknown-pseudo"),
]


@pytest.mark.parametrize("extra", SMUGGLING)
async def test_downgrade_smuggling_headers_reset_the_stream_only(
        extra: list[tuple[str, str]]) -> None:
    async with proxied() as (up, srv), h2_client(srv.port, validate=False) as client:
        bad = client.request("GET", "/headers", extra)
        refused = await client.response(bad)
        good = await client.get("/")  # the same connection goes on
    assert refused.reset == ErrorCodes.PROTOCOL_ERROR
    assert good.status == 200
    assert up.requests == 1  # nothing of the bad stream was forwarded


async def test_pseudo_header_after_a_regular_one_resets_the_stream() -> None:
    async with proxied() as (up, srv), h2_client(srv.port, validate=False) as client:
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                       (b"x-a", b"1"), (b":path", b"/"),
                                       (b":authority", b"localhost")], end_stream=True)
        client.flush()
        client.responses[sid] = H2Response()
        refused = await client.response(sid)
        good = await client.get("/")
    assert refused.reset == ErrorCodes.PROTOCOL_ERROR
    assert good.status == 200 and up.requests == 1


@pytest.mark.parametrize("declared,sent", [(5, 10), (10, 5)])
async def test_content_length_disagreeing_with_data_is_never_forwarded(
        declared: int, sent: int) -> None:
    async with proxied() as (up, srv), h2_client(srv.port, validate=False) as client:
        sid = client.request("POST", "/sha256", [("content-length", str(declared))],
                             body=None, end=False)
        frame = DataFrame(sid)
        frame.data = b"x" * sent
        frame.flags.add("END_STREAM")
        client.send_raw(frame.serialize())
        await client.wait_for(lambda: client.goaway is not None or client.responses[sid].done)
        await still_served(up, srv.port)
    # A connection error (PROTOCOL_ERROR): the h2 library checks the length against the DATA.
    assert client.goaway is not None and client.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert client.responses[sid].status == 0
    assert srv.stats.get("shop", "stable").responses.get(200, 0) == 1  # the bystander only


async def test_an_invalid_content_length_ends_the_connection_not_others() -> None:
    async with proxied() as (up, srv), h2_client(srv.port, validate=False) as client:
        client.request("POST", "/sha256", [("content-length", "-1")], body=b"x")
        code = await goaway_code(client)
        await still_served(up, srv.port)
    assert code == ErrorCodes.PROTOCOL_ERROR
    assert up.requests == 1
