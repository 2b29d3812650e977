"""A real gRPC server (grpcio) with a tiny service defined here by generic handlers on raw
bytes (no generated code): `/demo.Echo/Unary`, `/demo.Echo/Stream` (server streaming),
`/demo.Echo/Fail` (UNAVAILABLE before any message: a trailers-only answer), `/demo.Echo/Late`
(an error after a message), `/demo.Echo/Slow` (answers when released, or never).
Plus the wire format of gRPC messages, to build requests and read answers by hand."""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

SERVICE = "demo.Echo"


def frame(message: bytes, compressed: bool = False) -> bytes:
    """One length-prefixed gRPC message."""
    return struct.pack(">BI", int(compressed), len(message)) + message


def messages(body: bytes) -> list[bytes]:
    out = []
    while body:
        _, size = struct.unpack(">BI", body[:5])
        out.append(body[5:5 + size])
        body = body[5 + size:]
    return out


def grpc_request(method: str, authority: str, extra: list[tuple[bytes, bytes]] | None = None
                 ) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", authority.encode()),
            (b":path", f"/{SERVICE}/{method}".encode()),
            (b"content-type", b"application/grpc"), (b"te", b"trailers"), *(extra or [])]


class _Echo(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def service(self, details: Any) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        ident = {"request_deserializer": None, "response_serializer": None}
        if method == "Unary":
            return grpc.unary_unary_rpc_method_handler(
                lambda req, ctx: b"echo:" + req, **ident)
        if method == "Stream":
            def stream(req: bytes, ctx: Any) -> Iterator[bytes]:
                for i in range(int(req or b"3")):
                    yield b"part-%d" % i
            return grpc.unary_stream_rpc_method_handler(stream, **ident)
        if method == "Fail":
            def fail(req: bytes, ctx: Any) -> bytes:
                ctx.abort(grpc.StatusCode.UNAVAILABLE, "canary down: ünïcode & 100%")
                raise AssertionError("abort returns no more")
            return grpc.unary_unary_rpc_method_handler(fail, **ident)
        if method == "Late":
            def late(req: bytes, ctx: Any) -> Iterator[bytes]:
                yield b"first"
                ctx.abort(grpc.StatusCode.INTERNAL, "broke midway")
            return grpc.unary_stream_rpc_method_handler(late, **ident)
        if method == "Slow":
            def slow(req: bytes, ctx: Any) -> bytes:
                self.release.wait(10)
                return b"slow"
            return grpc.unary_unary_rpc_method_handler(slow, **ident)
        return None


@contextlib.contextmanager
def grpc_server() -> Iterator[tuple[int, threading.Event]]:
    """The server on 127.0.0.1 (h2c): its port, and the event that releases `Slow` calls."""
    release = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((_Echo(release),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, release
    finally:
        release.set()
        server.stop(0).wait(5)
