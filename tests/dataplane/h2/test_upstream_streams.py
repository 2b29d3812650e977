"""How a stream ends, and the connections' lives: request trailers, an answer before the
request's end, a stalled or cut response, a sender driven by `on_sent`, idle connections
closed with GOAWAY, an endpoint removed from the config."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from splitproxy.config.models import Timeouts
from splitproxy.dataplane.h2.client import STREAM_WINDOW
from splitproxy.dataplane.h2.upstream_stream import EndKind, Headers, StreamError, UpstreamStream
from splitproxy.dataplane.http.pool import Overloaded
from tests.support.waiting import wait_until

from .h2server import H2TestServer, ServerKnobs
from .pools import h2_pool, request

MiB = 1024 * 1024


async def test_request_trailers_follow_the_body() -> None:
    server = H2TestServer()
    async with server.serve() as port, h2_pool(port) as pool:
        stream = await pool.open_stream(request("/echo", "POST"))
        stream.send_data(b"abc")
        stream.send_trailers([(b"x-checksum", b"1")])
        await stream.response()
        assert await stream.body() == b"abc"
        assert server.state.request_trailers == [[(b"x-checksum", b"1")]]
        bad = await pool.open_stream(request("/echo", "POST"))
        with pytest.raises(StreamError, match="not sendable"):
            bad.send_trailers([(b":status", b"200")])
        bad.send_data(b"", end_stream=True)
        await bad.response()
        assert await bad.body() == b""


async def test_an_answer_before_the_requests_end_resets_the_rest() -> None:
    server = H2TestServer()
    async with server.serve() as port, h2_pool(port) as pool:
        stream = await pool.open_stream(request("/size/5", "POST"))  # body never sent
        await stream.response()
        assert await stream.body() == b"xxxxx"
        await wait_until(lambda: server.state.resets == [0], what="RST_STREAM NO_ERROR")
        assert pool.open_streams == 0
        stream.send_data(b"late", end_stream=True)  # ignored: the stream is over
        assert stream.out_size == 0


async def test_a_stalled_response_times_out_between_reads() -> None:
    server = H2TestServer()
    async with server.serve() as port, \
            h2_pool(port, timeouts=Timeouts(upstream_read=0.2)) as pool:
        stream = await pool.open_stream(request("/stall"), end_stream=True)
        await stream.response()
        with pytest.raises(StreamError) as info:
            await stream.body()
        assert info.value.kind == EndKind.TIMEOUT
        assert info.value.detail == "upstream stopped sending the response"


async def test_a_consumer_holding_credit_is_not_a_stalled_upstream() -> None:
    server = H2TestServer()
    async with server.serve() as port, \
            h2_pool(port, timeouts=Timeouts(upstream_read=0.2)) as pool:
        stream = await pool.open_stream(request(f"/size/{2 * MiB}"), end_stream=True)
        await stream.response()
        sid = stream.stream_id
        await wait_until(lambda: sid in server.state.blocked, what="the window filled")
        # The read timeout's check ran twice past it and found the upstream waiting for us
        # (it restarts the wait from then on), not stalled.
        held_at = stream.last_read
        await wait_until(lambda: stream.last_read > held_at + 0.3, timeout=2,
                         what="two checks of the read timeout while held")
        assert not stream.ended and stream.unacked == STREAM_WINDOW
        assert len(await stream.body()) == 2 * MiB


async def test_a_cut_connection_ends_its_streams_as_resets() -> None:
    server = H2TestServer()
    async with server.serve() as port, h2_pool(port) as pool:
        stream = await pool.open_stream(request("/die"), end_stream=True)
        error = await stream.closed()
        assert isinstance(error, StreamError)
        assert error.kind == EndKind.RESET and not error.retryable
        await wait_until(lambda: pool.conns == [], what="the connection forgotten")


class Sender:
    """Sends a body piece by piece, the next piece when the last one left (`on_sent`)."""

    def __init__(self, body: bytes, piece: int) -> None:
        self.rest = memoryview(body)
        self.piece = piece
        self.in_flight = 0
        self.stream: UpstreamStream | None = None
        self.got = hashlib.sha256()
        self.size = 0
        self.done = asyncio.get_running_loop().create_future()

    def next(self) -> None:
        assert self.stream is not None
        piece, self.rest = bytes(self.rest[:self.piece]), self.rest[self.piece:]
        self.in_flight += len(piece)
        self.stream.send_data(piece, end_stream=not self.rest)

    def on_sent(self, n: int) -> None:
        self.in_flight -= n
        if self.in_flight == 0 and self.rest:
            self.next()

    def on_response(self, status: int, headers: Headers, end_stream: bool) -> None:
        pass

    def on_data(self, data: bytes, end_stream: bool) -> None:
        self.got.update(data)
        self.size += len(data)
        assert self.stream is not None
        self.stream.ack(len(data))

    def on_trailers(self, trailers: Headers) -> None:
        pass

    def on_end(self, error: StreamError | None) -> None:
        self.done.set_result(error)


async def test_a_sender_driven_by_on_sent_moves_four_mib_both_ways() -> None:
    server = H2TestServer(ServerKnobs(window=65535))
    body = hashlib.sha256(b"seed").digest() * (4 * MiB // 32)
    async with server.serve() as port, h2_pool(port) as pool:
        sender = Sender(body, 100_000)
        sender.stream = await pool.open_stream(request("/echo", "POST"), handler=sender)
        sender.next()
        assert await asyncio.wait_for(sender.done, 10) is None
        assert sender.size == len(body)
        assert sender.got.digest() == hashlib.sha256(body).digest()


async def test_idle_connections_close_with_goaway() -> None:
    server = H2TestServer()
    async with server.serve() as port, h2_pool(port, timeouts=Timeouts(idle=0.2)) as pool:
        stream = await pool.open_stream(request("/size/1"), end_stream=True)
        await stream.closed()
        await wait_until(lambda: server.state.closed == 1, what="the idle connection closed")
        assert server.state.goaways == 1
        assert pool.conns == []


async def test_an_endpoint_removed_from_the_config_drains() -> None:
    server = H2TestServer()
    async with server.serve() as port, h2_pool(port) as pool:
        held = await pool.open_stream(request("/hold"), end_stream=True)
        await wait_until(lambda: server.state.open_now == 1, what="the held stream")
        # The HTTP/1.1 pools retire the endpoint's health record (`Pools.retain`) ...
        pool.health.retire()
        with pytest.raises(Overloaded, match="removed"):  # ... nothing new is opened
            await pool.open_stream(request("/size/1"), end_stream=True)
        server.release()  # ... and what was in flight finishes
        await held.response()
        assert await held.body() == b"held"
        await wait_until(lambda: server.state.closed == 1, what="the drained connection closed")


async def test_request_headers_are_made_valid_http2_or_refused() -> None:
    server = H2TestServer()
    async with server.serve() as port, h2_pool(port) as pool:
        with pytest.raises(StreamError) as info:
            await pool.open_stream(request("/size/1", extra=[(b"te", b"gzip")]),
                                   end_stream=True)
        assert info.value.kind == EndKind.PROTOCOL
        # Connection-specific headers are dropped, names lower-cased (RFC 9113 8.2.2).
        extra = [(b"connection", b"keep-alive"), (b"X-Upper", b"1"), (b"te", b"trailers")]
        stream = await pool.open_stream(request("/size/1", extra=extra), end_stream=True)
        assert await stream.closed() is None  # the connection is unharmed
        (sent,) = server.state.request_headers
        assert sent[4:] == [(b"x-upper", b"1"), (b"te", b"trailers")]
