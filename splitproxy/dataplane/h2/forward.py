"""A downstream HTTP/2 stream proxied to an HTTP/2 upstream (a version with `protocol: h2` or
`auto`): the request goes on a stream of the endpoint's multiplexed pool (`upstream`), the
answer comes back frame by frame, trailers included (gRPC's `grpc-status`), never through
HTTP/1.1.

The exchange dispatch made for the stream stays the request's record: its version, counters,
request id and sticky cookie; its endings (`fail`, `_fail_locally`, `client_gone`,
`_abort_client`) are the HTTP/1.1 ones, so a failure is counted and answered the same way
(a gRPC call's error answer is made trailers-only by `stream`). What only HTTP/2 has is here:
the body's credit returned to the client as the upstream takes it (`on_sent`) and the
upstream's credit as the client takes the answer (`credit`), the gRPC status counted as the
route's `grpc.error_codes` say (`grpc.record`), the gRPC deadline, and the retry of a stream
the upstream never processed (`outcome`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitproxy.dataplane.h2 import grpc
from splitproxy.dataplane.h2.outcome import answered
from splitproxy.dataplane.h2.relay import Replay, open_upstream
from splitproxy.dataplane.h2.upstream import H2Pool, H2Pools
from splitproxy.dataplane.h2.upstream_stream import Headers, StreamError, UpstreamStream
from splitproxy.dataplane.http.headers import SHADOW_MARKER
from splitproxy.dataplane.http.lifecycle import CONNECTING, DONE, RESPONDING, SENT, STREAMING

if TYPE_CHECKING:
    from splitproxy.dataplane.h2.request import H2Request
    from splitproxy.dataplane.h2.stream import H2Stream
    from splitproxy.dataplane.http.exchange import Exchange

# Hop-by-hop in HTTP/1.1, malformed in HTTP/2 (RFC 9113 8.2.2); the upstream's X-Request-Id
# is replaced by the request's own (as `http.response` does).
_NOT_PASSED = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                         b"upgrade", b"te", b"trailer", b"x-request-id"})
# Request fields the proxy writes itself (`upstream_fields`).
_REWRITTEN = frozenset({b"host", b"transfer-encoding", b"x-forwarded-for", b"x-request-id",
                        b"x-client-cert-subject", SHADOW_MARKER})


def forward_for(stream: H2Stream, ex: Exchange, pools: H2Pools, request: H2Request,
                ) -> H2Forward | None:
    """The forward of a stream whose version is spoken to over HTTP/2 (its endpoints'
    `protocol`: h2 or auto); None for HTTP/1.1 and the proxy's own answers."""
    version = ex.version
    if version is None or ex.local is not None or not version.pools:
        return None
    endpoint = version.pools[0].endpoint
    if endpoint.protocol == "http1":
        return None
    fields = upstream_fields(request, ex, b"https" if endpoint.tls is not None else b"http",
                             stream.client_ip, stream.listener.scheme, stream.identity)
    codes: frozenset[int] = frozenset()
    for compiled in stream.state.runtime.routes:
        if compiled.entry.name == version.route:
            codes = compiled.entry.grpc_error_codes
    return H2Forward(stream, ex, pools, fields, request.grpc, codes)


def upstream_fields(request: H2Request, ex: Exchange, scheme: bytes, client_ip: bytes,
                    listener_scheme: bytes, identity: bytes | None) -> Headers:
    """The header block sent upstream: the client's, with the forwarding headers the HTTP/1.1
    path writes (`http.request.upstream_head`), and `te: trailers` for gRPC."""
    authority = request.headers[0][1]
    fields: Headers = [(b":method", request.method), (b":scheme", scheme),
                       (b":authority", authority), (b":path", request.path)]
    xff = None
    has_xfp = has_xfh = False
    for name, value in request.headers[1:]:
        if name in _REWRITTEN:
            if name == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
            continue
        if name == b"x-forwarded-proto":
            if listener_scheme == b"https":
                continue  # this proxy ended the TLS: a client's claim is replaced
            has_xfp = True
        elif name == b"x-forwarded-host":
            has_xfh = True
        fields.append((name, value))
    fields.append((b"x-forwarded-for", xff + b", " + client_ip if xff else client_ip))
    if not has_xfp:
        fields.append((b"x-forwarded-proto", listener_scheme))
    if not has_xfh:
        fields.append((b"x-forwarded-host", authority))
    if identity is not None:
        fields.append((b"x-client-cert-subject", identity))
    if ex.request.request_id:
        fields.append((b"x-request-id", ex.request.request_id))
    if request.grpc:
        fields.append((b"te", b"trailers"))
    return fields


class H2Forward:
    """One downstream stream's request on an HTTP/2 upstream (see the module docstring);
    the `StreamHandler` of its upstream stream."""

    __slots__ = ("stream", "ex", "pools", "fields", "grpc", "error_codes", "upstream",
                 "h2pool", "pending", "replay", "request_done", "status", "headers",
                 "trailers", "call_deadline", "request_trailers")

    def __init__(self, stream: H2Stream, ex: Exchange, pools: H2Pools, fields: Headers,
                 grpc_call: bool, error_codes: frozenset[int]) -> None:
        self.stream = stream
        self.ex = ex
        self.pools = pools
        self.fields = fields
        self.grpc = grpc_call
        self.error_codes = error_codes
        self.upstream: UpstreamStream | None = None
        self.h2pool: H2Pool | None = None
        self.pending: list[bytes] = []  # body read before the upstream stream exists
        self.request_done = False
        self.replay = Replay()
        self.request_trailers: Headers | None = None
        self.status = 0
        self.headers: Headers = []
        self.trailers: Headers | None = None
        # grpc-timeout: the whole call must end by then (loop time; 0: none).
        self.call_deadline = grpc.deadline(stream.loop.time(), fields) if grpc_call else 0.0

    # -- the request (called by the downstream stream) ----------------------------------------
    def start(self) -> None:
        self.ex.phase = CONNECTING
        self.stream.loop.create_task(self._open())

    async def _open(self) -> None:
        ex = self.ex
        version = ex.version
        assert version is not None
        end = self.request_done and not self.pending and self.request_trailers is None
        if self.call_deadline and self.call_deadline <= self.stream.loop.time():
            # Spent in the proxy already (a retry): the upstream is not asked. Its
            # `grpc-timeout` is the time left when the stream opens (`H2Pool.open_stream`).
            ex.fail(504, "timeout", "deadline exceeded in the proxy", count_error=False)
            return
        opened = await open_upstream(ex, self.pools, self.fields, end, self, self._to_http1,
                                     self.call_deadline)
        if opened is None:
            return
        up, h2pool = opened
        self.upstream = up
        self.h2pool = h2pool
        ex.phase = SENT
        ex.sent_at = self.stream.state.clock()
        if not end:
            pending = self.pending
            self.pending = []
            for chunk in pending:
                up.send_data(chunk)
            if self.request_done:
                self._end_request(up)

    def _to_http1(self) -> None:
        """An `auto` endpoint chose HTTP/1.1 by ALPN: the exchange goes on the HTTP/1.1 pool
        as it would have (it holds the HTTP/1.1 head dispatch made)."""
        stream = self.stream
        ex = self.ex
        stream.forward = None
        ex.phase = CONNECTING
        pending = self.pending
        self.pending = []
        ex._choose_endpoint()
        for chunk in pending:
            ex.request_body(chunk)
        if self.request_done:
            ex.request_complete()

    def request_body(self, data: bytes) -> None:
        if self.ex.phase is DONE:
            return
        self.replay.keep(data, self.stream.state.limits.body_buffer)
        up = self.upstream
        if up is not None:
            up.send_data(data)
        else:
            self.pending.append(data)

    def request_complete(self) -> None:
        self.request_done = True
        up = self.upstream
        if up is not None and self.ex.phase is not DONE:
            self._end_request(up)

    def _end_request(self, up: UpstreamStream) -> None:
        """END_STREAM after the body: on the client's trailers when it sent some."""
        trailers = self.request_trailers
        if trailers is None:
            up.send_data(b"", end_stream=True)
            return
        try:
            up.send_trailers(trailers)
        except StreamError as exc:  # checked already (`request.read_trailers`): never
            self.drop()
            self.ex.fail(502, "protocol", exc.detail, count_error=False)

    def drop(self) -> None:
        """The proxy answers the stream itself (a body over the limit): the upstream's is
        abandoned."""
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.reset()

    def client_gone(self) -> None:
        self.drop()
        self.ex.client_gone()

    def credit(self, n: int) -> None:
        """`n` bytes of the answer went out to the client: the upstream may send as much."""
        up = self.upstream
        if up is not None:
            up.ack(n)

    # -- the answer (StreamHandler, called by the upstream stream) ----------------------------
    def on_response(self, status: int, headers: Headers, end_stream: bool) -> None:
        ex = self.ex
        if ex.phase is DONE:
            return
        self.status = ex.response_status = status
        self.headers = headers
        if self.h2pool is not None:
            answered(self.h2pool)
        ex.phase = RESPONDING
        fields: Headers = [(b":status", b"%d" % status)]
        fields += [(n, v) for n, v in headers if n[:1] != b":" and n not in _NOT_PASSED]
        cookie = ex.request.set_cookie
        if cookie is not None:
            fields.append((b"set-cookie", cookie.split(b": ", 1)[1]))
        if ex.request.request_id:
            fields.append((b"x-request-id", ex.request.request_id))
        self.stream.conn.send_headers(self.stream, fields, end_stream)

    def on_data(self, data: bytes, end_stream: bool) -> None:
        if self.ex.phase is DONE:
            return
        self.ex.phase = STREAMING
        self.ex.reads += 1
        stream = self.stream
        stream.out.append(data)
        stream.conn.push(stream)

    def on_trailers(self, trailers: Headers) -> None:
        self.trailers = trailers
        self.stream.trailers = [(n, v) for n, v in trailers if n[:1] != b":"]

    def on_sent(self, n: int) -> None:
        # Only bytes the client has not been credited for yet: a retry sends the kept body
        # again, and the client's window must not grow twice for it.
        fresh = self.replay.fresh(n)
        if fresh:
            self.stream.give_back(fresh)

    def on_end(self, error: StreamError | None) -> None:
        ex = self.ex
        self.upstream = None
        if ex.phase is DONE:
            return
        if error is None:
            self._complete()
            return
        if self.replay.stream_failed(ex, self.h2pool, error, self.request_done):
            self.pending = self.replay.replay()
            self.start()

    def _complete(self) -> None:
        """The answer is whole: counted (a gRPC status by the route's error codes), then the
        stream ends once the client's window has taken it all."""
        ex = self.ex
        ex.phase = DONE
        stats = ex.stats
        if stats is not None:
            stats.in_flight -= 1
            now = self.stream.state.clock()
            seconds = now - ex.request.start_time
            upstream = ex._upstream_time(now)
            if self.grpc:
                code = grpc.grpc_status(self.status, self.headers, self.trailers)
                grpc.record(stats, self.status, code, self.error_codes, seconds, upstream)
            else:
                stats.observe(self.status, seconds, upstream)
        self.stream.exchange_done(ex)
