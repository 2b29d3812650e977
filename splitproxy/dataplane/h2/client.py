"""One HTTP/2 connection to an upstream endpoint: the `h2` state machine (sans-I/O) driven by
an asyncio protocol, carrying many `UpstreamStream`s at once.

Flow control both ways: request body is framed only as the upstream's stream and connection
windows allow, and only while the socket's write buffer is below its high-water mark (a
stream's unframed body is its own, bounded by the consumer's `drain`/`on_sent`); response
body is credited back to the upstream only as each stream's consumer `ack`s it, so a slow
client holds its own stream's window, not the proxy's memory.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from splitproxy.dataplane.h2.upstream_stream import (
    EndKind,
    Headers,
    StreamError,
    StreamHandler,
    UpstreamStream,
    checked,
)
from splitproxy.dataplane.http.busypoll import UPSTREAM

if TYPE_CHECKING:
    from splitproxy.dataplane.h2.upstream import H2Pool

log = logging.getLogger("splitproxy.h2.upstream")

# The receive windows we advertise. A stream's window bounds what one stream may have in
# flight towards a consumer that does not read (1 MiB: one round trip of 1 ms moves 1 GB/s,
# and 100 stalled streams hold at most 100 MiB); the connection's is larger so one slow
# stream does not stall its neighbours before their own windows would.
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
# Until the upstream's SETTINGS arrive its stream limit is unknown: RFC 9113 6.5.2 advises
# servers to allow at least 100, so that many may be opened in the first round trip.
ASSUMED_MAX_STREAMS = 100
WRITE_HIGH_WATER = 256 * 1024  # as the HTTP/1.1 path (`http.flow`)


def _status(headers: Headers) -> int:
    for name, value in headers:
        if name == b":status":
            try:
                return int(value)
            except ValueError:
                break
    return 0


class H2ClientConnection(asyncio.Protocol):
    """One upstream HTTP/2 connection; `pool.H2Pool` opens, fills and retires it."""

    def __init__(self, pool: H2Pool, max_header_list: int) -> None:
        self.pool = pool
        self.loop: asyncio.AbstractEventLoop = pool.loop
        # Outbound headers are normalised and validated by `checked`, before h2's encoder
        # sees them: h2 validates lazily while encoding, so a header refused half-way would
        # leave entries in the HPACK table the upstream never received.
        config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                           validate_inbound_headers=True,
                                           normalize_outbound_headers=False,
                                           validate_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
        })
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, UpstreamStream] = {}
        # Streams with request body or an end still to frame: what `pump` looks at.
        self.sending: dict[int, UpstreamStream] = {}
        self._pumping = False
        self._pump_again = False
        self._receiving = False  # inside data_received: it writes at its end
        self._flush_soon = False  # a write is scheduled for this loop iteration
        self.settings_known = False  # the upstream's first SETTINGS arrived
        self.going_away = False  # GOAWAY received or sent: no new streams
        self.closed = False
        self.paused = False  # the socket's write buffer is full
        self.idle_since = self.loop.time()
        self.alpn: str | None = None

    # -- capacity (read by the pool) --------------------------------------------------------
    @property
    def max_streams(self) -> int:
        limit = self.h2.remote_settings.max_concurrent_streams
        return limit if self.settings_known else min(limit, ASSUMED_MAX_STREAMS)

    @property
    def available(self) -> bool:
        # Our count, not h2's open_outbound_streams (which walks every stream): a stream
        # leaves `streams` only once h2 has it closed too (ended, or reset by us).
        return not (self.going_away or self.closed) and len(self.streams) < self.max_streams

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tcp = cast(asyncio.Transport, transport)
        tcp.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        ssl_object = tcp.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.alpn = ssl_object.selected_alpn_protocol()
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()

    def data_received(self, data: bytes) -> None:
        busy = self.pool.owner.busy_poll
        if busy is not None:
            busy.kick(UPSTREAM)
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._flush()  # h2 queued a GOAWAY saying why
            self._fail_all(EndKind.PROTOCOL, f"upstream broke HTTP/2: {exc}")
            return
        self._receiving = True  # what the events produce (acks, resets) goes out in one write
        try:
            for event in events:
                self._event(event)
        finally:
            self._receiving = False
        self.pump()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self._fail_all(EndKind.RESET, "upstream connection lost"
                       + (f": {exc}" if exc is not None else ""))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()
        self._flush()

    # -- events ----------------------------------------------------------------------------
    def _event(self, event: h2.events.Event) -> None:
        E = h2.events
        if isinstance(event, E.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                  event.stream_id)
                return
            stream.got_data(event.data or b"", event.flow_controlled_length,
                            event.stream_ended is not None)
            if event.stream_ended is not None:
                self._finish(stream, None)
        elif isinstance(event, E.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                headers = event.headers
                ended = event.stream_ended is not None
                stream.got_head(_status(headers), headers, ended)
                if ended:
                    self._finish(stream, None)
        elif isinstance(event, E.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.got_trailers(event.headers)
                self._finish(stream, None)
        elif isinstance(event, E.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                code = int(event.error_code or 0)
                refused = code == h2.errors.ErrorCodes.REFUSED_STREAM
                what = "refused the stream" if refused else "reset the stream"
                self._finish(stream, StreamError(
                    EndKind.RESET, f"upstream {what} ({_code_name(code)})",
                    retryable=refused and not stream.got_response, refused=refused,
                    error_code=code))
        elif isinstance(event, E.WindowUpdated):
            pass  # pump() runs after every batch of events
        elif isinstance(event, E.RemoteSettingsChanged):
            self.settings_known = True
            self.pool.capacity_changed()
        elif isinstance(event, E.ConnectionTerminated):
            self._go_away(int(event.error_code or 0), event.last_stream_id or 0)

    def _go_away(self, code: int, last_stream_id: int) -> None:
        """No new streams here; those above `last_stream_id` were never processed."""
        self.going_away = True
        if code == 0:
            # A graceful GOAWAY lets the streams at or below last_stream_id finish (RFC 9113
            # 6.8), but h2's state machine closes the whole connection on receipt and would
            # refuse their remaining frames; reopen it: `going_away` keeps new streams off.
            self.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        self.pool.forget(self)
        for stream_id, stream in list(self.streams.items()):
            if stream_id > last_stream_id:
                self._finish(stream, StreamError(
                    EndKind.RESET, f"upstream going away ({_code_name(code)})",
                    retryable=True, error_code=code))
            elif code != 0:
                self._finish(stream, StreamError(
                    EndKind.PROTOCOL if code == 1 else EndKind.RESET,
                    f"upstream closed the connection ({_code_name(code)})", error_code=code))
        self._close_if_done()

    def _finish(self, stream: UpstreamStream, error: StreamError | None) -> None:
        if self.streams.pop(stream.stream_id, None) is None:
            return
        self.sending.pop(stream.stream_id, None)
        if not self.streams:
            self.idle_since = self.loop.time()
        if not stream.done_sending and not self.closed:
            # Answered (or refused) before the request's end: the rest is not wanted, and
            # a stream left half open would keep counting against the stream limit.
            try:
                self.h2.reset_stream(stream.stream_id, 0 if error is None else 0x8)
            except h2.exceptions.StreamClosedError:
                pass
            self._flush_later()
        stream._end(error)
        if self.going_away:
            self._close_if_done()
        else:
            self.pool.capacity_changed()

    def _fail_all(self, kind: EndKind, detail: str) -> None:
        self.going_away = True
        streams = list(self.streams.values())
        self.streams.clear()
        self.sending.clear()
        for stream in streams:
            stream._end(StreamError(kind, detail))
        self.close()

    def _close_if_done(self) -> None:
        if not self.streams and self.going_away and not self.closed:
            self.h2.close_connection()
            self._flush()
            self.close()

    # -- used by streams and the pool -------------------------------------------------------
    def open(self, headers: Headers, end_stream: bool,
             handler: StreamHandler | None) -> UpstreamStream | None:
        """A new stream (the pool checked `available`); None when this connection ran out of
        stream ids (it goes away; the pool picks another); raises StreamError when the
        headers cannot be sent (see `checked`)."""
        headers = checked(headers, trailers=False)
        try:
            stream_id = self.h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.go_away()
            return None
        stream = UpstreamStream(self, stream_id, handler)
        try:
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        except (h2.exceptions.ProtocolError, ValueError) as exc:
            # Checked already: the encoder's state is in doubt, so no new stream here.
            self.go_away()
            raise StreamError(EndKind.PROTOCOL, f"request not sendable: {exc}") from None
        stream.done_sending = end_stream
        self.streams[stream_id] = stream
        self._flush_later()
        return stream

    def pump(self) -> None:
        """Frame queued request body as far as the windows and the socket allow. Re-entrant
        calls (a consumer's `on_sent` sending more) only ask for one more round."""
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again and not self._stopped():
                self._pump_again = False
                for stream in list(self.sending.values()):
                    if self._stopped():
                        break
                    self._pump_stream(stream)
        finally:
            self._pumping = False

    def _stopped(self) -> bool:
        return self.paused or self.closed

    def _pump_stream(self, stream: UpstreamStream) -> None:
        h2c = self.h2
        sid = stream.stream_id
        if stream.ended:
            self.sending.pop(sid, None)
            return
        while stream.out and not self.paused:
            room = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
            if room <= 0:
                return  # a WINDOW_UPDATE pumps again
            chunk = stream.out[0]
            if len(chunk) > room:
                stream.out[0] = chunk[room:]
                chunk = chunk[:room]
            else:
                stream.out.popleft()
            stream.out_size -= len(chunk)
            end = not stream.out and stream.out_end and stream.out_trailers is None
            h2c.send_data(sid, chunk, end_stream=end)
            if end:
                stream.request_sent()
                self.sending.pop(sid, None)
            self._flush()  # the transport pauses us (pause_writing) when it is full
            stream.sent(len(chunk))
            if end:
                return
        if stream.out or self.paused:
            return
        if stream.out_end:
            try:
                if stream.out_trailers is not None:
                    h2c.send_headers(sid, stream.out_trailers, end_stream=True)
                    stream.out_trailers = None
                else:
                    h2c.end_stream(sid)
            except h2.exceptions.StreamClosedError:
                pass  # the upstream answered and closed it already
            stream.request_sent()
            self._flush_later()
        self.sending.pop(sid, None)  # nothing queued: `send_data` puts it back

    def ack(self, stream: UpstreamStream, n: int) -> None:
        """Credit `n` consumed bytes back: to the stream while it is open, to the connection
        always (h2 skips the stream's window once it is closed)."""
        if not self.closed:
            self.h2.acknowledge_received_data(n, stream.stream_id)
            self._flush_later()

    def reset_stream(self, stream: UpstreamStream, code: int) -> None:
        if self.streams.pop(stream.stream_id, None) is None:
            return
        self.sending.pop(stream.stream_id, None)
        if not self.closed:
            try:
                self.h2.reset_stream(stream.stream_id, code)
            except h2.exceptions.StreamClosedError:
                pass
            self._flush_later()
        if not self.streams:
            self.idle_since = self.loop.time()
        if self.going_away:
            self._close_if_done()
        else:
            self.pool.capacity_changed()

    def time_out(self, stream: UpstreamStream, detail: str) -> None:
        """A stream's timer expired: cancel it upstream, end it as a timeout."""
        if stream.stream_id in self.streams:
            self.reset_stream(stream, 0x8)
            stream._end(StreamError(EndKind.TIMEOUT, detail))

    def go_away(self) -> None:
        """Retire: streams in flight finish, then the connection says GOAWAY and closes.
        (Sent only then: h2 refuses every frame after its own GOAWAY, and a client's GOAWAY
        only tells the server it opens nothing more, which `going_away` already ensures.)"""
        if self.closed:
            return
        self.going_away = True
        self.pool.forget(self)
        self._close_if_done()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()
        self._fail_all_quietly()

    def _fail_all_quietly(self) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        self.sending.clear()
        for stream in streams:
            stream._end(StreamError(EndKind.RESET, "upstream connection closed"))

    def _flush_later(self) -> None:
        """Write what h2 queued at the end of this callback or this loop iteration: streams
        opened and credit returned in one tick leave in one write (counted: a small unary
        gRPC call took 2 writes to the upstream socket, now 1)."""
        if self._receiving or self._flush_soon:
            return
        self._flush_soon = True
        self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)


def _code_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"error {code}"
