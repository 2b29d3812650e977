"""A raw HTTP/2 client for tests: the `h2` library on a real socket (h2c by prior knowledge,
or TLS with ALPN), with access to the frames, so tests can send what no polite client would."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import H2Connection
from hyperframe.frame import GoAwayFrame

from .waiting import WAIT


@dataclass
class H2Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    parts: list[bytes] = field(default_factory=list)  # the DATA received, in order
    trailers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None  # RST_STREAM's error code, if the server reset the stream
    done: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    @property
    def received(self) -> int:
        return sum(len(p) for p in self.parts)


class H2Client:
    """One connection; `request` sends a stream and `response` waits for its end."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 validate: bool = True) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = H2Connection(H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate, validate_inbound_headers=False))
        self.responses: dict[int, H2Response] = {}
        self.goaway: ev.ConnectionTerminated | None = None
        self.closed = False
        self.events: list[ev.Event] = []
        self.frames: list[bytes] = []  # every frame received, raw
        # The DATA of the streams in `holding` is not acknowledged: no WINDOW_UPDATE goes back
        # for them (a slow reader); `held` counts per stream what `release_credit` gives back.
        self.holding: set[int] = set()
        self.held: dict[int, int] = {}
        self.sent_body: dict[int, int] = {}  # body bytes `send_body` has sent, per stream
        self.pings = 0  # PING ACKs received
        self._changed = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.conn.initiate_connection()
        self.flush()
        self._reader_task = asyncio.get_running_loop().create_task(self._read())

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def send_raw(self, data: bytes) -> None:
        """Bytes past the state machine (frames the library would refuse to send)."""
        self.flush()
        self.writer.write(data)

    async def _read(self) -> None:
        buffer = b""
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                buffer += data
                frames, buffer = _split_frames(buffer)
                for raw in frames:
                    self.frames.append(raw)
                    if raw[3] == GOAWAY_TYPE:
                        self._goaway(raw)  # kept from the library (see `_goaway`)
                        continue
                    for event in self.conn.receive_data(raw):
                        self._on(event)
                self.flush()
                self._changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed = True
            self._changed.set()

    def _goaway(self, raw: bytes) -> None:
        """The library's client state machine refuses every frame after a GOAWAY, even the
        answers of the streams the GOAWAY lets finish: it never sees one; the test does."""
        frame = GoAwayFrame(0)
        frame.parse_body(memoryview(raw[9:]))
        event = ev.ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data
        self.goaway = event

    def _on(self, event: ev.Event) -> None:
        self.events.append(event)
        sid = getattr(event, "stream_id", None)
        resp = self.responses.setdefault(sid, H2Response()) if sid else None
        if isinstance(event, ev.ResponseReceived) and resp is not None:
            hdrs = {k.decode(): v.decode() for k, v in event.headers or []}
            resp.status = int(hdrs.pop(":status"))
            resp.headers = hdrs
        elif isinstance(event, ev.DataReceived) and resp is not None:
            resp.parts.append(event.data or b"")
            size = event.flow_controlled_length or 0
            if sid in self.holding:
                self.held[sid] = self.held.get(sid, 0) + size
            else:
                self.conn.acknowledge_received_data(size, sid or 0)
        elif isinstance(event, ev.TrailersReceived) and resp is not None:
            resp.trailers = {k.decode(): v.decode() for k, v in event.headers or []}
        elif isinstance(event, ev.StreamEnded) and resp is not None:
            resp.done = True
        elif isinstance(event, ev.StreamReset) and resp is not None:
            resp.reset = event.error_code
            resp.done = True
        elif isinstance(event, ev.ConnectionTerminated):
            self.goaway = event
        elif isinstance(event, ev.PingAckReceived):
            self.pings += 1

    def request(self, method: str, path: str, headers: list[tuple[str, str]] | None = None,
                body: bytes | None = None, end: bool = True, authority: str = "localhost",
                ) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", "http"), (":authority", authority),
                  (":path", path), *(headers or [])]
        encoded = [(k.encode(), v.encode()) for k, v in fields]
        self.conn.send_headers(sid, encoded, end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end)
        self.responses[sid] = H2Response()
        self.flush()
        return sid

    def release_credit(self, sid: int) -> None:
        """Acknowledge the DATA of `sid` held so far, and all that comes later."""
        self.holding.discard(sid)
        size = self.held.pop(sid, 0)
        if size:
            self.conn.acknowledge_received_data(size, sid)
        self.flush()

    def open_connection_window(self, size: int) -> None:
        """A connection-level WINDOW_UPDATE: with a stream in `holding`, only its window shuts
        (the other streams of the connection may still receive)."""
        self.conn.increment_flow_control_window(size)
        self.flush()

    async def send_body(self, sid: int, body: bytes, end: bool = True,
                        timeout: float = WAIT) -> None:
        """Send `body` on `sid` as fast as the server's windows allow; `timeout` bounds each
        wait for credit, not the whole body."""
        view = memoryview(body)
        offset = 0
        self.sent_body[sid] = 0
        conn = self.conn
        while offset < len(body):
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if window <= 0:
                try:
                    await self.wait_for(lambda: conn.local_flow_control_window(sid) > 0,
                                        timeout)
                except TimeoutError:
                    raise AssertionError(
                        f"no credit for stream {sid} in {timeout}s (sent {offset} bytes; "
                        f"connection window {conn.outbound_flow_control_window})") from None
                continue
            part = bytes(view[offset:offset + window])
            offset += len(part)
            conn.send_data(sid, part, end_stream=end and offset == len(body))
            self.sent_body[sid] = offset
            self.flush()
            if self.writer.transport.get_write_buffer_size() > 1 << 20:
                await self.writer.drain()
        if not body and end:
            conn.end_stream(sid)
            self.flush()

    async def ping(self, timeout: float = WAIT) -> None:
        """A PING round trip: every frame the server sent before its ACK has been read."""
        seen = self.pings
        self.conn.ping(b"%08d" % (seen % 10**8))
        self.flush()
        await self.wait_for(lambda: self.pings > seen, timeout)

    async def wait_for(self, predicate: object, timeout: float = WAIT) -> None:
        async def loop() -> None:
            while not predicate():  # type: ignore[operator]
                if self.closed:
                    raise ConnectionError("the server closed the connection")
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(loop(), timeout)

    async def response(self, sid: int, timeout: float = WAIT) -> H2Response:
        await self.wait_for(lambda: self.responses[sid].done, timeout)
        return self.responses[sid]

    async def get(self, path: str, headers: list[tuple[str, str]] | None = None) -> H2Response:
        return await self.response(self.request("GET", path, headers))

    async def wait_closed(self, timeout: float = WAIT) -> None:
        async def loop() -> None:
            while not self.closed:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(loop(), timeout)

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


GOAWAY_TYPE = 0x7
RST_STREAM_TYPE = 0x3


def resets(client: H2Client) -> dict[int, int]:
    """stream id -> error code of every RST_STREAM the client received."""
    return {int.from_bytes(f[5:9], "big") & 0x7FFFFFFF: int.from_bytes(f[9:13], "big")
            for f in client.frames if f[3] == RST_STREAM_TYPE}


def _split_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Whole frames at the start of `buffer`, and what is left."""
    frames = []
    while len(buffer) >= 9:
        size = 9 + int.from_bytes(buffer[:3], "big")
        if len(buffer) < size:
            break
        frames.append(buffer[:size])
        buffer = buffer[size:]
    return frames, buffer


@contextlib.asynccontextmanager
async def h2_client(port: int, ctx: ssl.SSLContext | None = None,
                    validate: bool = True) -> AsyncIterator[H2Client]:
    """An HTTP/2 connection to 127.0.0.1:`port`: h2c by prior knowledge, or TLS (`ctx`)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None), WAIT)
    client = H2Client(reader, writer, validate)
    await client.start()
    try:
        yield client
    finally:
        await client.close()
