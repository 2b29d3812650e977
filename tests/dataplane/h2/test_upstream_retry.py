"""`VersionStream`: a refused stream, or one above a GOAWAY's last stream id, is sent again
once, invisibly to the consumer, while the request is whole in hand; counted as the rules say."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from splitproxy.config.models import Health
from splitproxy.dataplane.h2.upstream_stream import Headers, StreamError
from splitproxy.dataplane.h2.version_stream import VersionStream
from tests.support.waiting import wait_until

from .h2server import H2TestServer, ServerKnobs
from .pools import Version, request


class Consumer:
    """Records what a downstream stream would pass on."""

    def __init__(self) -> None:
        self.vs: VersionStream | None = None
        self.status = 0
        self.body = b""
        self.sent = 0
        self.done: asyncio.Future[StreamError | None] = \
            asyncio.get_running_loop().create_future()

    def on_response(self, status: int, headers: Headers, end_stream: bool) -> None:
        self.status = status

    def on_data(self, data: bytes, end_stream: bool) -> None:
        self.body += data
        assert self.vs is not None
        self.vs.ack(len(data))

    def on_trailers(self, trailers: Headers) -> None:
        pass

    def on_sent(self, n: int) -> None:
        self.sent += n

    def on_end(self, error: StreamError | None) -> None:
        assert not self.done.done(), "on_end twice"
        self.done.set_result(error)


async def send(v: Version, path: str, body: bytes | None = None, keep: int = 64 * 1024,
               ) -> tuple[Consumer, VersionStream]:
    consumer = Consumer()
    vs = consumer.vs = VersionStream(v.version, v.h2pools, v.version.stats,
                                     request(path, "POST" if body else "GET"), consumer,
                                     keep=keep)
    await vs.open(end_stream=body is None)
    if body is not None:
        vs.send_data(body, end_stream=True)
    return consumer, vs


async def test_a_refused_stream_is_sent_again_unseen(
        make_version: Callable[[list[int], Health], Version]) -> None:
    server = H2TestServer(ServerKnobs(refuse=1))
    async with server.serve() as port:
        v = make_version([port], Health())
        consumer, vs = await send(v, "/size/4")
        assert await asyncio.wait_for(consumer.done, 5) is None
        assert (consumer.status, consumer.body) == (200, b"xxxx")
        assert server.state.refused == 1 and vs.retries == 1
        assert v.version.stats.errors["reset"] == 1  # the refusal, against the endpoint ...
        assert v.version.pools[0].failures == 0  # ... whose answer then ended the run


async def test_a_body_is_replayed_and_its_credit_reported_once(
        make_version: Callable[[list[int], Health], Version]) -> None:
    server = H2TestServer(ServerKnobs(refuse=1))
    async with server.serve() as port:
        v = make_version([port], Health())
        consumer, _ = await send(v, "/echo", b"abc" * 1000)
        assert await asyncio.wait_for(consumer.done, 5) is None
        assert consumer.body == b"abc" * 1000
        assert consumer.sent == 3000


async def test_a_body_too_large_to_keep_is_not_retried(
        make_version: Callable[[list[int], Health], Version]) -> None:
    server = H2TestServer(ServerKnobs(refuse=1))
    async with server.serve() as port:
        v = make_version([port], Health())
        consumer, vs = await send(v, "/echo", b"x" * 2000, keep=1000)
        error = await asyncio.wait_for(consumer.done, 5)
        assert isinstance(error, StreamError) and error.refused
        assert vs.retries == 0


async def test_streams_above_a_goaway_go_to_a_new_connection_unblamed(
        make_version: Callable[[list[int], Health], Version]) -> None:
    server = H2TestServer(ServerKnobs(goaway_at=2))
    async with server.serve() as port:
        v = make_version([port], Health())
        first, _ = await send(v, "/hold")
        second, vs = await send(v, "/hold")
        await wait_until(lambda: server.state.connections == 2, what="the retry's connection")
        server.release()
        assert await asyncio.wait_for(first.done, 5) is None
        assert await asyncio.wait_for(second.done, 5) is None
        assert first.body == second.body == b"held"
        assert vs.retries == 1
        assert v.version.stats.errors == dict.fromkeys(v.version.stats.errors, 0)
        assert v.version.pools[0].failures == 0


async def test_a_retry_that_cannot_connect_ends_with_the_first_error(
        make_version: Callable[[list[int], Health], Version]) -> None:
    server = H2TestServer(ServerKnobs(goaway_at=1))
    async with server.serve() as port:
        v = make_version([port], Health())
        consumer = Consumer()
        vs = consumer.vs = VersionStream(v.version, v.h2pools, v.version.stats,
                                         request("/hold"), consumer)
        await vs.open(end_stream=True)
        # Every connection refuses its first stream with GOAWAY: the retry fares the same.
        error = await asyncio.wait_for(consumer.done, 5)
        assert isinstance(error, StreamError) and error.retryable
        assert vs.retries == 1 and server.state.connections == 2

