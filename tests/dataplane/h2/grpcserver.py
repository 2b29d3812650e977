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


# `health`: grpc.health.v1's service name -> HealthCheckResponse.status (1 SERVING,
# 2 NOT_SERVING); a name not listed is NOT_FOUND, as the standard health service answers.


class _Echo(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, release: threading.Event, health: dict[str, int] | None) -> None:
        self.release = release
        self.health = health

    def service(self, details: Any) -> Any:
        if details.method == "/grpc.health.v1.Health/Check" and self.health is not None:
            health = self.health

            def check(req: bytes, ctx: Any) -> bytes:
                service = req[2:].decode() if req else ""
                if service not in health:
                    ctx.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
                return b"\x08" + bytes((health[service],))
            return grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=None, response_serializer=None)
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
def grpc_server(health: dict[str, int] | None = None) -> Iterator[tuple[int, threading.Event]]:
    """The server on 127.0.0.1 (h2c): its port, and the event that releases `Slow` calls;
    with `health`, a grpc.health.v1 service answering from it (changes apply at once)."""
    release = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((_Echo(release, health),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, release
    finally:
        release.set()
        server.stop(0).wait(5)
