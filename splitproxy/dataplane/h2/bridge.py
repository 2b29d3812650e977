"""An HTTP/1.1 client's request to a version that speaks HTTP/2 (`protocol: h2`): the exchange
dispatch made, sent on a stream of the endpoint's multiplexed pool instead of an HTTP/1.1
connection, and the answer written back as HTTP/1.1.

Dispatch picks this class once, when the chosen version speaks h2 (`VersionRuntime.h2`); an
HTTP/1.1 version's exchange is the plain `Exchange`, untouched. Everything else is the
HTTP/1.1 exchange's: the downstream connection's ordering of requests, the counters, the
access log, the endings (`fail`, `_fail_locally`, `client_gone`, `_abort_client`), the
response head's rules (`http.response.final_head`: Content-Length kept, else chunked for an
HTTP/1.1 client and read-to-close for an HTTP/1.0 one). What differs:

* the head: the one dispatch wrote for an HTTP/1.1 upstream, read back into `:method`,
  `:scheme`, `:authority` (the Host), `:path` and the other fields, less the hop-by-hop ones;
* flow control both ways: the client's reading is paused while more than
  `PENDING_HIGH_WATER` bytes of its body wait for the upstream's window (`on_sent`), and the
  upstream's window is credited only as the client's socket takes the answer (held while the
  transport has paused our writing, returned by `client_writable`);
* response trailers are dropped (an HTTP/1.1 client gets a chunked body without them);
* a refused stream (or one above a GOAWAY) is sent again once when its body is still held,
  as for an HTTP/2 client (`outcome.may_retry`).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING

from splitproxy.dataplane.h2.outcome import answered
from splitproxy.dataplane.h2.relay import Replay, open_upstream
from splitproxy.dataplane.h2.upstream import H2Pool, H2Pools
from splitproxy.dataplane.h2.upstream_stream import Headers, StreamError, UpstreamStream
from splitproxy.dataplane.http.exchange import Exchange
from splitproxy.dataplane.http.flow import PENDING_HIGH_WATER
from splitproxy.dataplane.http.headers import CONTINUE_100
from splitproxy.dataplane.http.lifecycle import CONNECTING, DONE, RESPONDING, SENT, STREAMING
from splitproxy.dataplane.http.response import CHUNKED, DISCARD, BadResponse, final_head

if TYPE_CHECKING:
    from splitproxy.dataplane.http.lifecycle import RequestContext
    from splitproxy.dataplane.http.peer import Downstream
    from splitproxy.dataplane.http.runtime import VersionRuntime

# Fields of the HTTP/1.1 head that HTTP/2 does not carry (RFC 9113 8.2.2), and the Host,
# which becomes :authority.
_NOT_SENT = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                       b"upgrade", b"te", b"trailer", b"host"})


def h2_fields(head: bytes, scheme: bytes) -> Headers:
    """The HTTP/2 header block of an HTTP/1.1 head written by `http.request.upstream_head`
    (already checked and normalised by dispatch)."""
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    authority = b""
    fields: Headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"host":
            authority = value.strip()
        if name not in _NOT_SENT:
            fields.append((name, value.strip()))
    pseudo: Headers = [(b":method", method), (b":scheme", scheme)]
    if authority:
        pseudo.append((b":authority", authority))
    pseudo.append((b":path", target))
    return pseudo + fields


class H1Bridge(Exchange):
    """An HTTP/1.1 exchange whose version speaks HTTP/2 (see the module docstring); the
    `StreamHandler` of its upstream stream."""

    __slots__ = ("pools", "upstream", "h2pool", "replay", "unsent", "reading_paused",
                 "held_credit")

    def __init__(self, down: Downstream, version: VersionRuntime,
                 request: RequestContext, pools: H2Pools) -> None:
        super().__init__(down, version, request)
        self.pools = pools
        self.upstream: UpstreamStream | None = None
        self.h2pool: H2Pool | None = None
        self.replay = Replay()
        self.unsent = 0  # body bytes read from the client, not yet taken by the upstream
        self.reading_paused = False
        self.held_credit = 0  # answer bytes the client's socket has not taken yet

    # -- the request (called by the downstream protocol) ------------------------------------
    def start(self) -> None:
        # No BUFFERING: a stream holds no connection while a slow body comes.
        if self.request.continue_100:
            self.down.write(CONTINUE_100)
        self._choose_endpoint()

    def _choose_endpoint(self) -> None:
        self.phase = CONNECTING
        self.down.loop.create_task(self._open())

    async def _open(self) -> None:
        version = self.version
        assert version is not None
        pool = version.pools[0]
        scheme = b"https" if pool.endpoint.tls is not None else b"http"
        fields = h2_fields(self.request.head, scheme)
        pending = self.pending
        end = self.request_done and not pending
        opened = await open_upstream(self, self.pools, fields, end, self, self._not_h2)
        if opened is None:
            return
        up, h2pool = opened
        self.upstream = up
        self.h2pool = h2pool
        self.phase = SENT
        self.sent_at = self.down.state.clock()
        if not end:
            pending = self.pending
            self.pending = []
            self.pending_size = 0
            for chunk in pending:
                up.send_data(chunk)
            if self.request_done:
                up.send_data(b"", end_stream=True)

    def _not_h2(self) -> None:
        # Only an `auto` endpoint falls back, and those are not bridged.
        self.fail(502, "protocol", "endpoint refused HTTP/2", count_error=False)

    def request_body(self, data: bytes) -> None:
        if self.phase is DONE:
            return
        self.replay.keep(data, self.down.state.limits.body_buffer)
        self.unsent += len(data)
        if self.unsent > PENDING_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            self.down.flow.pause_reading_for(self)
        up = self.upstream
        if up is not None:
            up.send_data(data)
        else:
            self.pending.append(data)

    def request_complete(self) -> None:
        self.request_done = True
        if self.phase is DONE:
            return
        up = self.upstream
        if up is not None:
            if self.request.has_body:
                self.sent_at = self.down.state.clock()  # the upstream waited for the client
            up.send_data(b"", end_stream=True)

    def fail(self, status: int, kind: str, detail: str, count_error: bool = True) -> None:
        self._drop()
        self._read_again()
        super().fail(status, kind, detail, count_error)

    def _read_again(self) -> None:
        """The exchange ends with body still unsent (the upstream answered without reading
        it all): the client's reading must not stay paused for it."""
        if self.reading_paused:
            self.reading_paused = False
            self.down.flow.resume_reading_for(self)

    def client_gone(self) -> None:
        self._drop()
        super().client_gone()

    def _drop(self) -> None:
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.reset()

    def client_writable(self) -> None:
        """The client's socket drained: the upstream may send what it took meanwhile."""
        if self.paused_at:
            self.held += self.down.state.clock() - self.paused_at
            self.paused_at = 0.0
        held = self.held_credit
        self.held_credit = 0
        up = self.upstream
        if held and up is not None:
            up.ack(held)

    # -- the answer (StreamHandler, called by the upstream stream) ----------------------------
    def on_response(self, status: int, headers: Headers, end_stream: bool) -> None:
        if self.phase is DONE:
            return
        if self.h2pool is not None:
            answered(self.h2pool)
        request = self.request
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b"Unknown"
        # Content-Length kept; without it chunked (1.1) or read to the close (1.0).
        fields = [(n, v) for n, v in headers if n[:1] != b":"]
        try:
            head, self.response_mode, self.unframed, self.close_after = final_head(
                status, reason, fields, request.method_head, request.client_11, False,
                self.close_after, self.down.state.draining, request.set_cookie,
                request.request_id)
        except BadResponse as exc:
            self._drop()
            self.fail(502, "protocol", str(exc))
            return
        self.response_status = status
        self.phase = RESPONDING
        self.down.write(head)

    def on_data(self, data: bytes, end_stream: bool) -> None:
        if self.phase is DONE or not data:  # an empty DATA frame (END_STREAM): no chunk
            return
        self.phase = STREAMING
        self.reads += 1
        mode = self.response_mode
        if mode == CHUNKED:
            self.down.writelines([b"%x\r\n" % len(data), data, b"\r\n"])
        elif mode != DISCARD:
            self.down.write(data)
        flow = self.down.flow
        if flow.write_blocked:
            # Held for the client (not the version's time): credited on `client_writable`.
            self.held_credit += len(data)
            if not self.paused_at:
                self.paused_at = self.down.state.clock()
        elif self.upstream is not None:
            self.upstream.ack(len(data))

    def on_trailers(self, trailers: Headers) -> None:
        pass  # HTTP/1.1 clients get none (README: HTTP/2 and gRPC)

    def on_sent(self, n: int) -> None:
        fresh = self.replay.fresh(n)
        if fresh:
            self.unsent -= fresh
            if self.reading_paused and self.unsent <= PENDING_HIGH_WATER // 2:
                self.reading_paused = False
                self.down.flow.resume_reading_for(self)

    def on_end(self, error: StreamError | None) -> None:
        self.upstream = None
        self._read_again()
        if self.phase is DONE:
            return
        if error is None:
            if self.response_mode == CHUNKED:
                self.down.write(b"0\r\n\r\n")
            if not self.request_done:
                self.close_after = True  # the rest of the body is for nobody
            self._done(self.response_status)
            return
        if self.replay.stream_failed(self, self.h2pool, error, self.request_done):
            self.pending = self.replay.replay()
            self._choose_endpoint()


def bridged(down: Downstream, version: VersionRuntime, request: RequestContext,
            pools: H2Pools) -> Exchange:
    """`ServerState.bridge`: the exchange of an HTTP/1.1 request to an h2 version."""
    return H1Bridge(down, version, request, pools)
