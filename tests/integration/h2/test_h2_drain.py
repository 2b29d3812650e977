"""Graceful shutdown over HTTP/2: GOAWAY names the last stream taken, streams in flight finish,
a stream opened after it is refused (REFUSED_STREAM: safe to retry), nothing is lost."""

from __future__ import annotations

import asyncio

from h2.errors import ErrorCodes
from hyperframe.frame import HeadersFrame

from tests.support.h2client import H2Response, h2_client, resets
from tests.support.proxy import proxied
from tests.support.waiting import wait_until


async def test_drain_sends_goaway_finishes_streams_and_refuses_new_ones() -> None:
    async with proxied() as (up, srv), h2_client(srv.port) as client:
        first = client.request("GET", "/slow?delay=0.5")
        second = client.request("GET", "/slow?delay=0.5")
        await wait_until(lambda: up.in_flight == 2)
        stopping = asyncio.get_running_loop().create_task(srv.stop(drain=5.0))
        await client.wait_for(lambda: client.goaway is not None)
        assert client.goaway is not None
        last = client.goaway.last_stream_id
        # A stream the client opens anyway (its GOAWAY raced with the request): refused.
        late = second + 2
        frame = HeadersFrame(late)
        frame.data = client.conn.encoder.encode([
            (b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost"),
            (b":path", b"/")])
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        client.responses[late] = H2Response()
        client.send_raw(frame.serialize())
        answers = [await client.response(first), await client.response(second)]
        await client.wait_for(lambda: late in resets(client))
        await stopping
    assert client.goaway.error_code == ErrorCodes.NO_ERROR
    assert last == second
    assert [a.status for a in answers] == [200, 200]
    assert all(a.body == b"stable" for a in answers)
    assert up.requests == 2  # the late stream never reached the upstream
    # The library has no stream `late` (it did not open it): its RST_STREAM, from the frames.
    assert resets(client)[late] == ErrorCodes.REFUSED_STREAM
    assert srv.stats.get("shop", "stable").responses == {200: 2}


async def test_drain_closes_an_idle_h2_connection_at_once() -> None:
    async with proxied() as (up, srv), h2_client(srv.port) as client:
        assert (await client.get("/")).status == 200
        await asyncio.wait_for(srv.stop(drain=5.0), 2.0)  # does not wait the drain out
        await client.wait_closed()
    assert client.goaway is not None and client.goaway.error_code == ErrorCodes.NO_ERROR
