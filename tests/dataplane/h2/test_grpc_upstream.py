"""gRPC calls built by hand, sent through the HTTP/2 upstream pool to a real grpcio server:
unary and server-streaming calls with their trailers, trailers-only errors classified as the
version's errors, and `grpc-timeout` bounding the call."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from splitproxy.config.grpc import DEFAULT_ERROR_CODES, GrpcCode
from splitproxy.dataplane.h2 import grpc as g
from splitproxy.dataplane.h2.upstream_stream import EndKind, Headers, StreamError, UpstreamStream
from splitproxy.dataplane.stats import VersionStats

from .grpcserver import frame, grpc_request, grpc_server, messages
from .pools import h2_pool

ERRORS = frozenset(int(c) for c in DEFAULT_ERROR_CODES)


@pytest.fixture
def server() -> Iterator[tuple[int, object]]:
    with grpc_server() as running:
        yield running


async def call(port: int, method: str, payload: bytes, extra: Headers | None = None,
               deadline_from: Headers | None = None) -> tuple[UpstreamStream, bytes]:
    """One call; its deadline from `deadline_from` when given (not sent), else from the
    headers sent."""
    async with h2_pool(port) as pool:
        headers = grpc_request(method, f"127.0.0.1:{port}", extra)
        stream = await pool.open_stream(
            headers, end_stream=False,
            deadline=g.deadline(asyncio.get_running_loop().time(),
                                headers if deadline_from is None else deadline_from))
        stream.send_data(frame(payload), end_stream=True)
        await stream.response()
        body = await stream.body()
        return stream, body


async def test_a_unary_call_and_its_trailers(server: tuple[int, object]) -> None:
    port, _ = server
    stream, body = await call(port, "Unary", b"hello")
    assert stream.status == 200 and g.is_grpc(stream.headers)
    assert messages(body) == [b"echo:hello"]
    assert stream.trailers is not None
    assert g.grpc_status(stream.status, stream.headers, stream.trailers) == GrpcCode.OK
    stats = VersionStats("svc", "canary")
    assert g.record(stats, stream.status, GrpcCode.OK, ERRORS, 0.01) == 200
    assert stats.responses == {200: 1}


async def test_a_server_streaming_call(server: tuple[int, object]) -> None:
    port, _ = server
    stream, body = await call(port, "Stream", b"5")
    assert messages(body) == [b"part-%d" % i for i in range(5)]
    assert g.grpc_status(stream.status, stream.headers, stream.trailers) == GrpcCode.OK


async def test_a_trailers_only_unavailable_counts_as_a_503_of_the_version(
        server: tuple[int, object]) -> None:
    port, _ = server
    stream, body = await call(port, "Fail", b"")
    assert body == b"" and stream.trailers is None  # trailers-only: all in the head
    code = g.grpc_status(stream.status, stream.headers, stream.trailers)
    assert code == GrpcCode.UNAVAILABLE
    message = dict(stream.headers)[b"grpc-message"]
    assert g.percent_decode(message) == "canary down: ünïcode & 100%"
    stats = VersionStats("svc", "canary")
    assert g.record(stats, stream.status, code, ERRORS, 0.01, 0.005) == 503
    assert stats.responses == {503: 1}
    # Not among the route's codes: an answer like any other.
    assert g.record(stats, stream.status, code, frozenset({13}), 0.01) == 200


async def test_an_error_after_a_message_is_read_from_the_trailers(
        server: tuple[int, object]) -> None:
    port, _ = server
    stream, body = await call(port, "Late", b"")
    assert messages(body) == [b"first"]
    assert g.grpc_status(stream.status, stream.headers, stream.trailers) == GrpcCode.INTERNAL


async def test_grpc_timeout_bounds_the_call(server: tuple[int, object]) -> None:
    # The deadline comes from a 200 ms grpc-timeout, but the server is not sent one: grpcio
    # enforces its own, and under load its DEADLINE_EXCEEDED answer (a normal end of the
    # stream) could come before the pool's timer, which is what this test is about.
    port, _ = server
    with pytest.raises(StreamError) as info:
        await call(port, "Slow", b"", deadline_from=[(b"grpc-timeout", b"200m")])
    assert info.value.kind == EndKind.TIMEOUT
    assert g.failure_code("timeout", 504) == GrpcCode.DEADLINE_EXCEEDED


class Recorder:
    """A callback consumer, as the downstream side is one: acks each chunk as it takes it."""

    def __init__(self) -> None:
        self.stream: UpstreamStream | None = None
        self.events: list[tuple[str, object]] = []
        self.done = asyncio.get_running_loop().create_future()
        self.sent = 0

    def on_response(self, status: int, headers: Headers, end_stream: bool) -> None:
        self.events.append(("response", status))

    def on_data(self, data: bytes, end_stream: bool) -> None:
        self.events.append(("data", data))
        assert self.stream is not None
        self.stream.ack(len(data))

    def on_trailers(self, trailers: Headers) -> None:
        self.events.append(("trailers", dict(trailers)[b"grpc-status"]))

    def on_sent(self, n: int) -> None:
        self.sent += n

    def on_end(self, error: StreamError | None) -> None:
        self.done.set_result(error)


async def test_the_callback_consumer_sees_every_event_in_order(
        server: tuple[int, object]) -> None:
    port, _ = server
    async with h2_pool(port) as pool:
        recorder = Recorder()
        stream = await pool.open_stream(grpc_request("Stream", f"127.0.0.1:{port}"),
                                        handler=recorder)
        recorder.stream = stream
        request = frame(b"2")
        stream.send_data(request, end_stream=True)
        assert await asyncio.wait_for(recorder.done, 5) is None
        kinds = [kind for kind, _ in recorder.events]
        assert kinds[0] == "response" and kinds[-1] == "trailers"
        assert messages(b"".join(v for k, v in recorder.events if k == "data"
                                 and isinstance(v, bytes))) == [b"part-0", b"part-1"]
        assert recorder.events[-1] == ("trailers", b"0")
        assert recorder.sent == len(request)
        assert stream.unacked == 0
