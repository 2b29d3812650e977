"""Client side, HTTP/2: one protocol instance per client connection that speaks HTTP/2, over
TLS when ALPN chose `h2`, or in cleartext when its first bytes are the client preface (h2c by
prior knowledge; `adopt` takes the connection over from the HTTP/1.1 protocol).

The `h2` library keeps the protocol state (frames, HPACK, windows); this class feeds it the
socket's bytes, turns its events into streams (`stream.H2Stream`), each routed and proxied by
the HTTP/1.1 machinery (`dispatch.build_exchange`, `Exchange`), and ends abusive connections
cheaply (`limits.FloodCounter`). Shutdown sends GOAWAY: streams already begun finish, later
ones are refused (REFUSED_STREAM, which a client may retry elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.settings import Settings
from hyperframe.frame import GoAwayFrame

from splitproxy.dataplane.h2 import limits
from splitproxy.dataplane.h2.bridge import H1Bridge
from splitproxy.dataplane.h2.forward import forward_for
from splitproxy.dataplane.h2.request import Malformed, read_request, read_trailers
from splitproxy.dataplane.h2.stream import H2Stream
from splitproxy.dataplane.http.accesslog import CLIENT_CLOSED, LoggedDownstream, log_request
from splitproxy.dataplane.http.busypoll import CLIENT
from splitproxy.dataplane.http.connection import HEADER, IDLE, ClientConnection
from splitproxy.dataplane.http.dispatch import build_exchange
from splitproxy.dataplane.http.exchange import Exchange
from splitproxy.dataplane.http.flow import WRITE
from splitproxy.dataplane.http.headers import error_response
from splitproxy.dataplane.http.lifecycle import RESPONDING, RequestContext
from splitproxy.dataplane.http.request import Reject
from splitproxy.dataplane.http.state import ServerState

if TYPE_CHECKING:

    from splitproxy.dataplane.h2.upstream import H2Pools
    from splitproxy.dataplane.http.downstream import DownstreamProtocol

log = logging.getLogger("splitproxy.h2")

_CONFIG = H2Configuration(
    client_side=False, header_encoding=None,
    # Our own checks (`request`) make a malformed request a stream error, not a connection one.
    validate_inbound_headers=False, normalize_inbound_headers=False,
    # What goes out is made by the proxy's own code from a parsed head: already lower case.
    validate_outbound_headers=False, normalize_outbound_headers=False,
)


class _Facts:
    """What dispatch asks the HTTP/1.1 parser, answered for an HTTP/2 request."""

    __slots__ = ("method",)

    def __init__(self, method: bytes) -> None:
        self.method = method

    def get_method(self) -> bytes:
        return self.method

    def get_http_version(self) -> str:
        return "1.1"  # every HTTP/1.1 rule that needs a Host applies

    def should_keep_alive(self) -> bool:
        return True

    def should_upgrade(self) -> bool:
        return False  # Upgrade is malformed in HTTP/2 (refused by `request`)


class H2Server(ClientConnection):
    """One HTTP/2 client connection (see the module docstring)."""

    __slots__ = ("h2", "streams", "flood", "goaway_id", "_in_events", "peer_goaway", "logged",
                 "pools", "_counted")

    def __init__(self, state: ServerState, pools: H2Pools | None = None) -> None:
        super().__init__(state)
        self.pools = pools  # the HTTP/2 upstream pools (None: every version over HTTP/1.1)
        self.h2 = H2Connection(config=_CONFIG)
        self.streams: dict[int, H2Stream] = {}
        self._counted = 0  # of `streams`, in the worker's `writes.h2_busy` (`_recount`)
        self.flood = limits.FloodCounter(0.0)
        self.goaway_id: int | None = None  # GOAWAY sent: streams above this are refused
        self._in_events = False  # handling a read: its writes go out together at the end
        self.peer_goaway = False
        # The access log is on (chosen per connection, as for HTTP/1.1: `accesslog`).
        self.logged = issubclass(state.protocol, LoggedDownstream)

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._accept(transport)
        state = self.state
        # Typed as the HTTP/1.1 protocol: the server asks every connection only what this
        # class answers too (drain, check_deadlines, lingering, close_soon, abort).
        state.connections.add(self)
        self.flood = limits.FloodCounter(self.loop.time())
        h2 = self.h2
        max_list = state.limits.max_header
        h2.local_settings = Settings(client=False, initial_values=limits.settings(max_list))
        # Applied at once, not when the client acknowledges them: a header block sent before
        # its ACK is held to the same bound.
        h2.decoder.max_header_list_size = max_list
        h2.initiate_connection()
        h2.increment_flow_control_window(limits.CONNECTION_WINDOW - 65535)
        if len(state.connections) > state.limits.max_connections:
            state.stats.count_local("overload")
            self._goaway(ErrorCodes.REFUSED_STREAM, 0)
            return
        self._arm_timer(HEADER)
        self._flush()

    def data_received(self, data: bytes) -> None:
        busy = self.state.busy_poll
        if busy is not None:
            busy.kick(CLIENT)
        if self.broken:
            self._linger_data(data)
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            # The library has queued GOAWAY with the right code (PROTOCOL_ERROR, ENHANCE_YOUR_CALM
            # for an HPACK bomb or a CONTINUATION flood, FRAME_SIZE_ERROR...).
            log.info("client %s: HTTP/2 connection error: %s", self.client_ip.decode(), exc)
            self.state.stats.bad_requests += 1
            self._end_all()
            return
        flood = self.flood
        flood.tick(self.loop.time())
        self._in_events = True
        try:
            for event in events:
                self._event(event)
        finally:
            self._in_events = False
        over = flood.over()
        if over is not None:
            log.warning("client %s: %s: connection closed", self.client_ip.decode(), over)
            self.state.stats.bad_requests += 1
            self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, self.h2.highest_inbound_stream_id,
                         over.encode())
            return
        self._flush()

    def eof_received(self) -> bool | None:
        self.client_eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.state.connections.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        self._recount()
        for stream in streams:
            if not stream.finished:
                self._log(stream, "client-closed")
            stream.client_gone()

    def pause_writing(self) -> None:
        # The client does not read: read nothing more from it (its PINGs and SETTINGS would
        # be answered into a buffer nobody drains) and hold every stream's upstream.
        self.flow.client_stalled(None, None, False)
        now = self.loop.time()
        for stream in self.streams.values():
            if not stream.blocked_since:
                stream.stalled(now)

    def resume_writing(self) -> None:
        self.flow.client_drained(None)
        self.flow.resume_reading_for(WRITE)
        for stream in list(self.streams.values()):
            self.push(stream)

    # -- events -----------------------------------------------------------------------------
    def _event(self, event: ev.Event) -> None:
        kind = type(event)
        if kind is ev.RequestReceived:
            self._request(cast(ev.RequestReceived, event))
        elif kind is ev.DataReceived:
            self._data(cast(ev.DataReceived, event))
        elif kind is ev.StreamEnded:
            self._ended(cast(ev.StreamEnded, event).stream_id)
        elif kind is ev.StreamReset:
            self._reset_by_client(cast(ev.StreamReset, event).stream_id)
        elif kind is ev.WindowUpdated:
            sid = cast(ev.WindowUpdated, event).stream_id
            if sid:
                stream = self.streams.get(sid)
                if stream is not None:
                    self.push(stream)
            else:
                for stream in list(self.streams.values()):
                    self.push(stream)
        elif kind is ev.RemoteSettingsChanged:
            self.flood.settings += 1
            for stream in list(self.streams.values()):  # a larger initial window opens them
                self.push(stream)
        elif kind is ev.PingReceived:
            self.flood.pings += 1
        elif kind is ev.ConnectionTerminated:
            self.peer_goaway = True
            if not self.streams:
                self._close()
        elif kind is ev.TrailersReceived:
            self._trailers(cast(ev.TrailersReceived, event))

    def _request(self, event: ev.RequestReceived) -> None:
        sid = event.stream_id
        self.flood.opened += 1
        h2 = self.h2
        if self.goaway_id is not None and sid > self.goaway_id:
            h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)  # never begun: safe to retry
            return
        if self.timer_kind == HEADER or self.timer_kind == IDLE:
            self._cancel_timer()
        end = event.stream_ended is not None
        try:
            request = read_request(list(event.headers or []), end)
        except Malformed as exc:
            log.debug("client %s: stream %d malformed: %s", self.client_ip.decode(), sid, exc)
            self.state.stats.bad_requests += 1
            h2.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            self._idle_check()
            return
        stream = H2Stream(self, sid)
        stream.grpc = request.grpc
        stream.method = request.method
        stream.path = request.path.split(b"?", 1)[0]
        # As an HTTP/1.1 head would count: request line, "name: value\r\n" lines, "\r\n".
        stream.received = len(request.method) + len(request.path) + 14 + sum(
            len(n) + len(v) + 4 for n, v in request.headers)
        self.streams[sid] = stream
        self._recount()
        try:
            exchange = build_exchange(stream, _Facts(request.method), request.headers,
                                      request.path)
        except Reject as exc:
            self.state.stats.bad_requests += 1
            exchange = Exchange(stream, None, RequestContext(keep_alive=False),
                                local=error_response(exc.status, exc.detail, True))
        stream.exchange = exchange
        if end:
            stream.request_done = True
        pools = self.pools
        # Not a MirroredExchange (HTTP/1.1 versions only); an H1Bridge is an HTTP/2 version's
        # exchange, which an HTTP/2 stream forwards itself.
        forward = forward_for(stream, exchange, pools, request) \
            if pools is not None and (type(exchange) is Exchange or type(exchange) is H1Bridge) \
            else None
        if forward is not None:
            stream.forward = forward
            forward.start()
            if end:
                forward.request_complete()
            return
        if request.grpc and exchange.local is None and exchange.version is not None:
            # Never downgraded: without HTTP/2 to the version the call's trailers (its status)
            # would be lost. Counted as the version's 502: a misconfigured canary fails.
            exchange.fail(502, "protocol", f"gRPC needs protocol h2 on version "
                          f"{exchange.version.name}", count_error=False)
            return
        exchange.start()
        if end:
            exchange.request_complete()

    def _data(self, event: ev.DataReceived) -> None:
        sid = event.stream_id
        flow_len = event.flow_controlled_length or 0
        stream = self.streams.get(sid)
        if stream is None or stream.finished:
            self.h2.acknowledge_received_data(flow_len, sid)  # the connection's window only
            return
        data = event.data or b""
        max_body = self.state.limits.max_body
        if max_body is not None:
            stream.body_bytes += len(data)
            if stream.body_bytes > max_body:
                ex = stream.exchange
                if stream.forward is not None:
                    stream.forward.drop()
                if ex is not None and ex.phase < RESPONDING:
                    ex.fail(413, "protocol", f"request body larger than {max_body} bytes",
                            count_error=False)
                else:
                    stream.abort()
                self.h2.acknowledge_received_data(flow_len, sid)
                return
        stream.request_body(data, flow_len)

    def _trailers(self, event: ev.TrailersReceived) -> None:
        """Request trailers go on to an HTTP/2 upstream (`H2Forward`); an HTTP/1.1 upstream
        gets none (the body went chunked without them: README, HTTP/2 and gRPC)."""
        stream = self.streams.get(event.stream_id or 0)
        if stream is None or stream.finished:
            return
        try:
            trailers = read_trailers(list(event.headers or []))
        except Malformed as exc:
            log.debug("client %s: stream %d: %s", self.client_ip.decode(), stream.sid, exc)
            self.state.stats.bad_requests += 1
            self.reset(stream, ErrorCodes.PROTOCOL_ERROR)
            return
        if stream.forward is not None and trailers:
            stream.forward.request_trailers = trailers

    def _ended(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        stream.request_done = True
        forward = stream.forward
        ex = stream.exchange
        if forward is not None:
            forward.request_complete()
        elif ex is not None:
            ex.request_complete()
        if stream.finished:
            self._forget(stream)

    def _reset_by_client(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        self._recount()
        if not stream.finished:
            self.flood.resets += 1  # reset before its answer was complete: rapid reset counts
            self._log(stream, "client-closed")
        stream.client_gone()
        stream.release_window()
        self._idle_check()

    # -- output (called by the streams) ---------------------------------------------------------
    def send_headers(self, stream: H2Stream, fields: list[tuple[bytes, bytes]],
                     end_stream: bool = False) -> None:
        """A response head; with `end_stream` the whole answer (gRPC's trailers-only)."""
        if stream.finished:
            return
        self.h2.send_headers(stream.sid, fields, end_stream=end_stream)
        if end_stream:
            stream.finished = True
            self._log(stream, "done")
            if not stream.request_done:
                self.h2.reset_stream(stream.sid, ErrorCodes.NO_ERROR)
            self._forget(stream)
        self._flush()

    def push(self, stream: H2Stream) -> None:
        """Send what `stream` has waiting, as far as the client's windows allow; END_STREAM
        once the answer is complete and sent."""
        if stream.finished:
            return
        h2 = self.h2
        sid = stream.sid
        out = stream.out
        while out:
            window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
            if window <= 0:
                if not stream.blocked_since:
                    stream.stalled(self.loop.time())
                self._flush()
                return
            chunk = out[0]
            if len(chunk) <= window:
                out.popleft()
                h2.send_data(sid, chunk)
                sent = len(chunk)
            else:
                h2.send_data(sid, chunk[:window])
                out[0] = chunk[window:]
                sent = window
            if stream.forward is not None:
                stream.forward.credit(sent)  # the upstream's window follows the client's
        if stream.blocked_since and not self.flow.write_blocked:
            stream.drained()
        if stream.ended:
            if stream.trailers is not None:
                h2.send_headers(sid, stream.trailers, end_stream=True)
            else:
                h2.end_stream(sid)
            stream.finished = True
            self._log(stream, "done")
            if not stream.request_done:
                # The answer is complete and nobody reads the rest of the body (RFC 9113 8.1).
                h2.reset_stream(sid, ErrorCodes.NO_ERROR)
            self._forget(stream)
        self._flush()

    def reset(self, stream: H2Stream, code: int) -> None:
        if not stream.finished:
            self._log(stream, "cut")
            stream.finished = True
            self.h2.reset_stream(stream.sid, code)
            stream.client_gone()
        self._forget(stream)
        self._flush()

    def ack(self, stream: H2Stream, size: int) -> None:
        self.h2.acknowledge_received_data(size, stream.sid)
        self._flush()

    def _recount(self) -> None:
        """After `streams` changed: the worker's count of HTTP/2 streams in flight follows
        (the busy poller's, `WriteBatch.loaded`). Reconciled, not stepped, so that no path
        that adds or drops streams can make it drift."""
        now = len(self.streams)
        self.state.writes.h2_busy += now - self._counted
        self._counted = now

    def _forget(self, stream: H2Stream) -> None:
        if self.streams.get(stream.sid) is stream and (stream.request_done or stream.finished):
            del self.streams[stream.sid]
            self._recount()
            stream.release_window()  # what it held back is the connection's window again
            self._idle_check()

    def _idle_check(self) -> None:
        if self.streams:
            return
        if self.goaway_id is not None or self.peer_goaway or self.state.draining:
            self._flush()
            self._linger()
        elif not self.timer_kind:
            self._arm_timer(IDLE)

    def _log(self, stream: H2Stream, end: str) -> None:
        ex = stream.exchange
        if not self.logged or stream.logged or ex is None:
            return
        stream.logged = True
        now = self.state.clock()
        status = stream.status or (CLIENT_CLOSED if end == "client-closed" else 502)
        log_request(self.state, ex, stream.method, stream.path, status,
                    now - (ex.request.start_time or now), stream.sent, stream.received,
                    self.client_ip, end)

    def _flush(self) -> None:
        if self._in_events:
            return
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    # -- endings ----------------------------------------------------------------------------
    def _goaway(self, code: int, last: int, debug: bytes = b"") -> None:
        """GOAWAY with an error: the connection ends now, its streams with it."""
        self.h2.close_connection(code, additional_data=debug or None, last_stream_id=last)
        self._end_all()

    def _end_all(self) -> None:
        self.broken = True
        self._in_events = False
        self._flush()
        streams = list(self.streams.values())
        self.streams.clear()
        self._recount()
        for stream in streams:
            if not stream.finished:
                self._log(stream, "client-closed")
            stream.finished = True
            stream.client_gone()
        self._close()

    def drain(self) -> None:
        """Graceful shutdown: GOAWAY naming the last stream taken; those finish, nothing new
        begins, the connection closes after the last one."""
        if self.goaway_id is not None or self.broken:
            return
        self._flush()
        last = self.goaway_id = self.h2.highest_inbound_stream_id
        # Written beside the library's state machine: its own close_connection() would refuse
        # to send anything more, and the streams in flight must still be answered.
        frame = GoAwayFrame(0)
        frame.last_stream_id = last
        frame.error_code = ErrorCodes.NO_ERROR
        if self.transport is not None:
            self.transport.write(frame.serialize())
        self._idle_check()

    # -- deadlines (the sweeper) ------------------------------------------------------------
    def check_deadlines(self, now: float) -> None:
        if self.deadline and now >= self.deadline:
            self._on_timer()
        timeouts = self.state.timeouts
        for stream in list(self.streams.values()):
            stream.check_deadlines(now, timeouts.client_send, timeouts.client_body)
        if self.flow.send_watch:
            self._check_send_progress(now)

    def _on_timer(self) -> None:
        kind = self._timer_fired()
        if kind is None:
            return
        # No request in time (HEADER), or none for `timeouts.idle` (IDLE): a polite end.
        self._goaway(ErrorCodes.NO_ERROR, self.h2.highest_inbound_stream_id)


def adopt(old: DownstreamProtocol, transport: asyncio.BaseTransport, data: bytes,
          pools: H2Pools | None = None) -> None:
    """Hand a connection whose first bytes are the HTTP/2 preface (or whose TLS handshake
    chose `h2`) from the HTTP/1.1 protocol to an `H2Server`."""
    state = old.state
    state.connections.discard(old)
    old._cancel_timer()
    new = H2Server(state, pools)
    new.listener = old.listener
    transport.set_protocol(new)
    new.connection_made(transport)
    if data:
        new.data_received(data)
