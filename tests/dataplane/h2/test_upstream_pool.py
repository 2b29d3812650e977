"""The HTTP/2 upstream pool against a real h2 server on a socket: multiplexing, the server's
stream limit, GOAWAY, refused streams, flow control both ways, timeouts."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from splitproxy.config.models import Limits, Timeouts
from splitproxy.dataplane.h2 import upstream as h2upstream
from splitproxy.dataplane.h2.client import STREAM_WINDOW
from splitproxy.dataplane.h2.upstream_stream import EndKind, StreamError
from splitproxy.dataplane.http.pool import Overloaded
from tests.support.waiting import wait_until

from .h2server import H2TestServer, ServerKnobs
from .pools import h2_pool, request

MiB = 1024 * 1024


async def test_a_response_with_body_and_trailers() -> None:
    server = H2TestServer()
    async with server.serve() as port, h2_pool(port) as pool:
        stream = await pool.open_stream(request("/trailers"), end_stream=True)
        status, headers = await stream.response()
        assert status == 200
        assert await stream.body() == b"body"
        assert stream.trailers == [(b"grpc-status", b"0"), (b"x-trailer", b"yes")]
        assert await stream.closed() is None


async def test_concurrent_streams_share_one_connection() -> None:
    server = H2TestServer()
    async with server.serve() as port, h2_pool(port) as pool:
        async def one(i: int) -> bytes:
            stream = await pool.open_stream(request(f"/size/{1000 + i}"), end_stream=True)
            await stream.response()
            return await stream.body()

        bodies = await asyncio.gather(*(one(i) for i in range(50)))
        assert [len(b) for b in bodies] == [1000 + i for i in range(50)]
        assert server.state.connections == 1
        assert server.state.streams == 50


async def test_the_servers_stream_limit_opens_another_connection() -> None:
    server = H2TestServer(ServerKnobs(max_streams=2))
    async with server.serve() as port, h2_pool(port) as pool:
        first = await pool.open_stream(request("/size/1"), end_stream=True)
        await first.response()  # the server's SETTINGS are known from here on
        await first.closed()
        streams = [await pool.open_stream(request("/hold"), end_stream=True) for _ in range(6)]
        await wait_until(lambda: server.state.open_now == 6, what="six held streams")
        assert server.state.connections == 3
        assert server.state.max_open == 6
        assert {len(conn.streams) for conn in pool.conns} == {2}
        server.release()
        for stream in streams:
            await stream.response()
            assert await stream.body() == b"held"


async def test_connections_are_bounded_and_requests_wait_for_a_stream() -> None:
    server = H2TestServer(ServerKnobs(max_streams=1))
    async with server.serve() as port, h2_pool(port) as pool:
        warm = await pool.open_stream(request("/size/1"), end_stream=True)
        await warm.closed()
        held = [await pool.open_stream(request("/hold"), end_stream=True)
                for _ in range(h2upstream.MAX_CONNECTIONS)]
        waiting = asyncio.create_task(pool.open_stream(request("/size/3"), end_stream=True))
        await wait_until(lambda: pool.owner.waiting == 1, what="a request waiting")
        assert server.state.connections == h2upstream.MAX_CONNECTIONS
        server.release()
        late = await asyncio.wait_for(waiting, 5)
        await late.response()
        assert await late.body() == b"xxx"
        for stream in held:
            assert await stream.closed() is None
        assert server.state.connections == h2upstream.MAX_CONNECTIONS


async def test_waiting_too_long_for_a_stream_is_overload() -> None:
    server = H2TestServer(ServerKnobs(max_streams=1))
    timeouts = Timeouts(pool_wait=0.2)
    async with server.serve() as port, h2_pool(port, timeouts=timeouts) as pool:
        warm = await pool.open_stream(request("/size/1"), end_stream=True)
        await warm.closed()
        for _ in range(h2upstream.MAX_CONNECTIONS):
            await pool.open_stream(request("/hold"), end_stream=True)
        with pytest.raises(Overloaded):
            await pool.open_stream(request("/size/1"), end_stream=True)


async def test_too_many_waiting_is_overload_at_once() -> None:
    server = H2TestServer(ServerKnobs(max_streams=1))
    async with server.serve() as port, \
            h2_pool(port, limits=Limits(max_pending=1)) as pool:
        warm = await pool.open_stream(request("/size/1"), end_stream=True)
        await warm.closed()
        for _ in range(h2upstream.MAX_CONNECTIONS):
            await pool.open_stream(request("/hold"), end_stream=True)
        first = asyncio.create_task(pool.open_stream(request("/size/1"), end_stream=True))
        await wait_until(lambda: pool.owner.waiting == 1, what="one waiting")
        with pytest.raises(Overloaded, match="too many"):
            await pool.open_stream(request("/size/1"), end_stream=True)
        server.release()
        await (await first).closed()


async def test_goaway_finishes_older_streams_and_makes_newer_ones_retryable() -> None:
    server = H2TestServer(ServerKnobs(goaway_at=2))
    async with server.serve() as port, h2_pool(port) as pool:
        older = await pool.open_stream(request("/hold"), end_stream=True)
        newer = await pool.open_stream(request("/hold"), end_stream=True)
        error = await newer.closed()
        assert isinstance(error, StreamError)
        assert error.retryable and not error.refused
        assert pool.conns == []  # going away: takes no new stream
        # A new stream goes on a new connection; the older one still finishes.
        fresh = await pool.open_stream(request("/size/2"), end_stream=True)
        await fresh.response()
        assert await fresh.body() == b"xx"
        assert server.state.connections == 2
        server.release()
        await older.response()
        assert await older.body() == b"held"
        old_conn = older.conn
        await wait_until(lambda: old_conn.closed, what="the drained connection closed")


async def test_a_refused_stream_is_retryable_and_says_refused() -> None:
    server = H2TestServer(ServerKnobs(refuse=1))
    async with server.serve() as port, h2_pool(port) as pool:
        stream = await pool.open_stream(request("/size/1"), end_stream=True)
        error = await stream.closed()
        assert isinstance(error, StreamError)
        assert error.retryable and error.refused and error.kind == EndKind.RESET
        again = await pool.open_stream(request("/size/1"), end_stream=True)
        await again.response()
        assert await again.body() == b"x"


async def test_four_mib_both_ways_through_small_windows() -> None:
    # The server's window is 64 KiB: the body must wait for its credit, chunk by chunk.
    server = H2TestServer(ServerKnobs(window=65535))
    body = bytes(range(256)) * (4 * MiB // 256)
    async with server.serve() as port, h2_pool(port) as pool:
        stream = await pool.open_stream(request("/echo", "POST"), end_stream=False)
        stream.send_data(body, end_stream=True)
        await stream.response()
        got = hashlib.sha256()
        size = 0
        async for chunk in stream:
            got.update(chunk)
            size += len(chunk)
        assert size == len(body)
        assert got.digest() == hashlib.sha256(body).digest()
        assert stream.sent_bytes == len(body)


async def test_an_upload_stops_where_the_servers_window_does() -> None:
    server = H2TestServer(ServerKnobs(window=65535, hold_credit=True))
    async with server.serve() as port, h2_pool(port) as pool:
        stream = await pool.open_stream(request("/echo", "POST"), end_stream=False)
        await stream.response()
        stream.send_data(b"u" * MiB)
        sid = stream.stream_id
        await wait_until(lambda: server.state.received.get(sid, 0) == 65535,
                         what="the server's window filled")
        assert stream.sent_bytes == 65535
        assert stream.out_size == MiB - 65535
        stream.reset()


async def test_a_download_stops_where_the_consumers_credit_does() -> None:
    server = H2TestServer()
    async with server.serve() as port, h2_pool(port) as pool:
        stream = await pool.open_stream(request(f"/size/{4 * MiB}"), end_stream=True)
        await stream.response()
        sid = stream.stream_id
        # Nothing consumed: the server stops at the stream window we advertised.
        await wait_until(lambda: sid in server.state.blocked, what="the server blocked")
        assert server.state.sent[sid] == STREAM_WINDOW
        assert len(await stream.body()) == 4 * MiB


async def test_a_response_that_does_not_come_times_out() -> None:
    server = H2TestServer()
    async with server.serve() as port, \
            h2_pool(port, timeouts=Timeouts(response_header=0.2)) as pool:
        stream = await pool.open_stream(request("/hold"), end_stream=True)
        error = await stream.closed()
        assert isinstance(error, StreamError) and error.kind == EndKind.TIMEOUT
        await wait_until(lambda: server.state.open_now == 0, what="the stream reset upstream")


async def test_a_deadline_shorter_than_the_response_timeout_wins() -> None:
    server = H2TestServer()
    async with server.serve() as port, h2_pool(port) as pool:
        loop = asyncio.get_running_loop()
        stream = await pool.open_stream(request("/hold"), end_stream=True,
                                        deadline=loop.time() + 0.1)
        error = await stream.closed()
        assert isinstance(error, StreamError) and error.kind == EndKind.TIMEOUT
        assert error.detail == "deadline exceeded"


async def test_a_connect_failure_raises_oserror(refused_port: object) -> None:
    assert callable(refused_port)
    async with h2_pool(refused_port()) as pool:
        with pytest.raises(OSError):
            await pool.open_stream(request("/"), end_stream=True)
