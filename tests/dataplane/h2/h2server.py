"""A real HTTP/2 server for the upstream-pool tests: the `h2` library on an asyncio socket,
with knobs for what a pool must cope with (a stream limit, refused streams, GOAWAY, a server
that holds its window shut) and counters for what the tests assert.

Paths: `/echo` streams the request body back as it arrives; `/size/N` answers N bytes;
`/trailers` answers a body and trailers; `/hold` answers once `release()` is called;
`/grpc-error` a trailers-only gRPC UNAVAILABLE; `/stall` a head and 5 bytes, then nothing;
`/die` a head, then the connection is cut; `/after-body` answers the number of body bytes
once the request has ended; `/sized/N` N bytes with a content-length (none for HEAD);
`/empty` a 204; `/reset` resets the stream (INTERNAL_ERROR) before any answer. Every answer
carries `x-conn` (the connection's number) and `x-stream` (the stream id).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame


@dataclass
class ServerKnobs:
    max_streams: int = 100
    # Receive window this server advertises per stream (small: the client must wait).
    window: int = 65535
    refuse: int = 0  # refuse this many streams (RST_STREAM REFUSED_STREAM), then serve
    # On this many-th stream of a connection, a graceful GOAWAY whose last stream id is the
    # one before: that stream is never served, the earlier ones are.
    goaway_at: int = 0
    hold_credit: bool = False  # never acknowledge request body (the client must stop)


@dataclass
class ServerState:
    connections: int = 0
    streams: int = 0
    open_now: int = 0
    max_open: int = 0
    refused: int = 0
    received: dict[int, int] = field(default_factory=dict)  # stream id -> body bytes
    sent: dict[int, int] = field(default_factory=dict)  # stream id -> body bytes sent
    blocked: set[int] = field(default_factory=set)  # streams waiting for the client's window
    paths: list[str] = field(default_factory=list)
    request_headers: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    resets: list[int] = field(default_factory=list)  # RST_STREAM codes the client sent
    request_trailers: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    closed: int = 0  # connections closed
    goaways: int = 0  # GOAWAY frames the client sent


class _Out:
    __slots__ = ("data", "end", "trailers")

    def __init__(self) -> None:
        self.data = bytearray()
        self.end = False
        self.trailers: list[tuple[bytes, bytes]] | None = None


class H2TestServer:
    def __init__(self, knobs: ServerKnobs | None = None) -> None:
        self.knobs = knobs or ServerKnobs()
        self.state = ServerState()
        self.held: list[asyncio.Future[None]] = []
        self.port = 0
        self.protocols: list[_ServerProtocol] = []

    def release(self) -> None:
        for f in self.held:
            if not f.done():
                f.set_result(None)

    @contextlib.asynccontextmanager
    async def serve(self, ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _ServerProtocol(self), "127.0.0.1", 0,
                                          ssl=ssl_ctx)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self.port
        finally:
            self.release()
            server.close()
            for proto in self.protocols:
                if proto.transport is not None:
                    proto.transport.abort()
            await server.wait_closed()


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, server: H2TestServer) -> None:
        self.server = server
        knobs = server.knobs
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: knobs.max_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: knobs.window,
        })
        self.transport: asyncio.Transport | None = None
        self.number = 0
        self.streams_here = 0
        self.out: dict[int, _Out] = {}
        self.echo: set[int] = set()
        self.after_body: set[int] = set()  # answered once the request's body has ended

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.protocols.append(self)
        self.server.state.connections += 1
        self.number = self.server.state.connections
        self.conn.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.state.closed += 1
        for f in self.server.held:
            if not f.done():
                f.cancel()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self.handle(event)
        self.pump()
        self.flush()

    def handle(self, event: h2.events.Event) -> None:
        state = self.server.state
        knobs = self.server.knobs
        E = h2.events
        if isinstance(event, E.RequestReceived):
            sid = event.stream_id
            assert sid is not None
            if state.refused < knobs.refuse:
                state.refused += 1
                self.conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            state.streams += 1
            self.streams_here += 1
            state.open_now += 1
            state.max_open = max(state.max_open, state.open_now)
            state.request_headers.append(list(event.headers or []))
            headers = dict(event.headers or [])
            path = headers[b":path"].decode()
            state.paths.append(path)
            if knobs.goaway_at and self.streams_here == knobs.goaway_at:
                # Written as a raw frame: the server's own h2 would close on its own GOAWAY.
                frame = hyperframe.frame.GoAwayFrame(0)
                frame.last_stream_id = max(0, sid - 2)
                frame.error_code = 0
                self.flush()
                assert self.transport is not None
                self.transport.write(frame.serialize())
                state.open_now -= 1
                return
            self.respond(sid, path, event.stream_ended is not None)
        elif isinstance(event, E.DataReceived):
            sid = event.stream_id
            assert sid is not None
            state.received[sid] = state.received.get(sid, 0) + len(event.data or b"")
            if sid in self.echo and sid in self.out:
                self.out[sid].data += event.data or b""
                if event.stream_ended is not None:
                    self.out[sid].end = True
            elif event.stream_ended is not None and sid in self.out and sid not in self.echo:
                pass
            if not knobs.hold_credit:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, E.StreamEnded):
            sid = event.stream_id
            if sid in self.echo and sid in self.out:
                self.out[sid].end = True
            if sid in self.after_body and sid in self.out:
                got = b"%d" % state.received.get(sid, 0)
                self.conn.send_headers(sid, [(b":status", b"200")])
                self.out[sid].data += got
                self.out[sid].end = True
        elif isinstance(event, E.StreamReset):
            sid = event.stream_id
            state.resets.append(int(event.error_code or 0))
            if sid is not None and self.out.pop(sid, None) is not None:
                state.open_now -= 1
        elif isinstance(event, E.TrailersReceived):
            state.request_trailers.append(list(event.headers or []))
        elif isinstance(event, E.ConnectionTerminated):
            state.goaways += 1

    def respond(self, sid: int, path: str, request_ended: bool) -> None:
        base = [(b"x-conn", b"%d" % self.number), (b"x-stream", b"%d" % sid)]
        out = self.out[sid] = _Out()
        if path == "/echo":
            self.conn.send_headers(sid, [(b":status", b"200"), *base])
            self.echo.add(sid)
            out.end = request_ended
        elif path.startswith("/size/"):
            self.conn.send_headers(sid, [(b":status", b"200"), *base])
            out.data += b"x" * int(path[6:])
            out.end = True
        elif path.startswith("/sized/"):  # with a content-length; no body for HEAD
            size = int(path[7:])
            self.conn.send_headers(sid, [(b":status", b"200"),
                                         (b"content-length", b"%d" % size), *base])
            if self.method(sid) != b"HEAD":
                out.data += b"y" * size
            out.end = True
        elif path == "/empty":
            self.conn.send_headers(sid, [(b":status", b"204"), *base], end_stream=True)
            self.done(sid)
        elif path == "/reset":
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.done(sid)
        elif path == "/trailers":
            self.conn.send_headers(sid, [(b":status", b"200"), *base])
            out.data += b"body"
            out.trailers = [(b"grpc-status", b"0"), (b"x-trailer", b"yes")]
            out.end = True
        elif path == "/grpc-error":
            self.conn.send_headers(sid, [(b":status", b"200"),
                                         (b"content-type", b"application/grpc"),
                                         (b"grpc-status", b"14"), *base], end_stream=True)
            self.done(sid)
        elif path == "/after-body":
            self.after_body.add(sid)
        elif path == "/stall":
            self.conn.send_headers(sid, [(b":status", b"200"), *base])
            out.data += b"first"
        elif path == "/die":
            self.conn.send_headers(sid, [(b":status", b"200"), *base])
            self.flush()
            assert self.transport is not None
            self.transport.abort()
        elif path == "/hold":
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.server.held.append(waiter)

            def answer(_: asyncio.Future[None]) -> None:
                if sid in self.out and not waiter.cancelled():
                    self.conn.send_headers(sid, [(b":status", b"200"), *base])
                    out.data += b"held"
                    out.end = True
                    self.pump()
                    self.flush()
            waiter.add_done_callback(answer)
        else:
            self.conn.send_headers(sid, [(b":status", b"404"), *base], end_stream=True)
            self.done(sid)

    def method(self, sid: int) -> bytes:
        return dict(self.server.state.request_headers[-1]).get(b":method", b"")

    def done(self, sid: int) -> None:
        if self.out.pop(sid, None) is not None:
            self.server.state.open_now -= 1

    def pump(self) -> None:
        state = self.server.state
        for sid, out in list(self.out.items()):
            while out.data:
                try:
                    room = min(self.conn.local_flow_control_window(sid),
                               self.conn.max_outbound_frame_size, len(out.data))
                except h2.exceptions.StreamClosedError:
                    self.done(sid)
                    break
                if room <= 0:
                    state.blocked.add(sid)
                    break
                state.blocked.discard(sid)
                chunk = bytes(out.data[:room])
                del out.data[:room]
                self.conn.send_data(sid, chunk)
                state.sent[sid] = state.sent.get(sid, 0) + len(chunk)
            if not out.data and out.end and sid in self.out:
                if out.trailers is not None:
                    self.conn.send_headers(sid, out.trailers, end_stream=True)
                else:
                    self.conn.end_stream(sid)
                self.done(sid)
