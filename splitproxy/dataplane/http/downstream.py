"""Client side: one HTTP/1.1 protocol instance per client connection (uvloop + httptools).

Requests are parsed here, checked for ambiguous framing, routed to a version and turned into
`Exchange`s that run one at a time, in order, so pipelined requests are answered in order.

Memory per connection is bounded by one rule: nothing more is read from a client while an
answer waits to be written beyond the write buffer's high-water mark (the transport paused
us), while a request waits behind another (pipelining), or while an upgrade is undecided; and
no new answer is started while the client is not reading the previous one. A client that
stops reading altogether is cut after `timeouts.client_send` without progress (the send
timeout), so it cannot hold the upstream connection its answer paused.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from splitproxy.dataplane.http.dispatch import build_exchange
from splitproxy.dataplane.http.exchange import Exchange
from splitproxy.dataplane.http.headers import error_response
from splitproxy.dataplane.http.request import Reject

if TYPE_CHECKING:
    from splitproxy.dataplane.http.upstream import UpstreamConnection
    from splitproxy.dataplane.server import ProxyServer

log = logging.getLogger("splitproxy.downstream")

WRITE_HIGH_WATER = 256 * 1024

# Lingering close (nginx's lingering_close): after an answer that ends the connection, stop
# writing (FIN) and read and discard what the client still sends for up to LINGER_TIME seconds
# or LINGER_BYTES bytes, so the client reads the answer instead of a reset. nginx reads for up
# to 30 s (lingering_time); 5 s is enough for a client to see the answer and stop.
LINGER_TIME = 5.0
LINGER_BYTES = 16 << 20

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset

# Owners of a pause of the client's reading; reading resumes when none is left.
_PIPELINE = "pipeline"  # a request waits behind another
_WRITE = "write"  # the client does not read what we write
_UPGRADE = "upgrade"  # an upgrade request waits for the upstream's 101 (or not)


class DownstreamProtocol(asyncio.Protocol):
    __slots__ = (
        "server", "loop", "transport", "parser", "client_ip", "queue", "current", "receiving",
        "_url", "_headers", "_in_head", "_head_bytes", "_head_size", "deadline", "_timer_kind",
        "_read_paused_by", "_paused_upstream", "_tunnel", "_upgrading", "_broken",
        "_body_bytes", "_write_blocked", "_held", "lingering", "_linger_bytes", "_client_eof",
        "reads", "_reads_seen", "_body_deadline", "_send_watch", "_send_pending",
        "_send_deadline",
    )

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b""
        self.queue: deque[Exchange] = deque()
        self.current: Exchange | None = None  # the exchange whose answer goes out now
        self.receiving: Exchange | None = None  # the exchange whose request body comes in now
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_bytes = 0  # raw bytes of a head still incomplete (a slow or huge one)
        self._head_size = 0  # parsed header bytes of the current head
        self._body_bytes = 0
        # One deadline per connection, checked by the server's sweeper: no timer handle is
        # created or cancelled per request.
        self.deadline = 0.0
        self._timer_kind = ""
        self._read_paused_by: set[object] = set()
        self._paused_upstream: asyncio.Transport | None = None
        self._tunnel: UpstreamConnection | None = None
        self._upgrading: Exchange | None = None
        self._broken = False  # a fatal parse error: read nothing more
        self._write_blocked = False  # the transport said pause_writing: start no new answer
        self._held = b""  # bytes after an upgrade request's head, until the upstream decides
        self.lingering = False
        self._linger_bytes = 0
        self._client_eof = False
        # Request-body progress for the body timeout: packets read, as the sweeper last saw.
        self.reads = 0
        self._reads_seen = 0
        self._body_deadline = 0.0
        # Send timeout: set while output waits for the client (paused writing, or a close
        # that waits for the buffer to drain); only then does the sweeper look at it.
        self._send_watch = False
        self._send_pending = 0  # bytes waiting to be written, as the sweeper last saw
        self._send_deadline = 0.0

    @property
    def draining(self) -> bool:
        return self.server.draining

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = tcp = cast(asyncio.Transport, transport)
        tcp.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0].encode("latin-1") if peer else b"unknown"
        server = self.server
        server.connections.add(self)
        if len(server.connections) > server.limits.max_connections:
            # Overload: a clear, cheap answer now rather than a client that waits for nothing.
            server.stats.count_local("overload")
            self._broken = True
            tcp.write(error_response(503, "too many client connections", True, retry_after=1))
            self._linger()
            return
        self._arm_timer("header")

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            transport = self._tunnel.transport
            if transport is not None:
                transport.write(data)
            return
        if self._broken:
            if self.lingering:
                self._linger_bytes += len(data)
                if self._linger_bytes > LINGER_BYTES and self.transport is not None:
                    self.transport.abort()
            return
        if self._upgrading is not None:
            self._held += data  # arrived before the pause took effect
            return
        self.reads += 1
        if self._in_head or self.receiving is None:
            self._head_bytes += len(data)
        while True:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                rest = data[exc.args[0]:]
                if self._upgrade_pending():  # set by the callbacks of this very feed
                    # Until the upstream answers 101 what follows is not tunnel data: hold it
                    # (and read nothing more); if it does not switch, it is parsed as requests.
                    self._held = rest
                    self.pause_reading_for(_UPGRADE)
                    return
                if rest and not self._broken:
                    data = rest  # an upgrade answered by the proxy itself: requests follow
                    continue
                return
            except httptools.HttpParserCallbackError as exc:
                reason = exc.__context__
                if isinstance(reason, Reject):
                    self._reject(reason.status, reason.detail)
                    return
                raise
            except httptools.HttpParserError as exc:
                self._reject(400, f"malformed request: {exc}")
                return
            break
        if self._in_head and self._head_bytes > self.server.limits.max_header:
            self._reject(431, "request head too large")

    def _upgrade_pending(self) -> bool:
        return self._upgrading is not None

    def eof_received(self) -> bool | None:
        # A client that half-closes after a complete request still gets its answer; one that
        # stops in the middle of a request is gone.
        self._client_eof = True
        if self.current is not None and self.receiving is None and not self.lingering:
            self.current.close_after = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.server.connections.discard(self)
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        for ex in (self.current, self.receiving, *self.queue):
            if ex is not None:
                ex.client_gone()
        self.queue.clear()
        self.current = self.receiving = self._upgrading = None

    def pause_writing(self) -> None:
        self._write_blocked = True
        self._send_watch = True
        if self._tunnel is None:
            self.pause_reading_for(_WRITE)
        current = self.current
        up = self._tunnel or (current.up if current is not None else None)
        if up is not None and up.transport is not None:
            up.transport.pause_reading()
            self._paused_upstream = up.transport
            if self._tunnel is None and current is not None and not current.paused_at:
                # Held for the client, not the version's time (see Exchange._upstream_time).
                current.paused_at = self.loop.time()

    def upstream_paused(self, up: UpstreamConnection) -> bool:
        """We stopped reading `up` because the client is slow: not the upstream's delay."""
        return self._paused_upstream is not None and self._paused_upstream is up.transport

    def release_upstream_pause(self, up: UpstreamConnection) -> None:
        if self._paused_upstream is not None and self._paused_upstream is up.transport:
            if not self._paused_upstream.is_closing():
                self._paused_upstream.resume_reading()
            self._paused_upstream = None

    def resume_writing(self) -> None:
        self._write_blocked = False
        self._send_deadline = 0.0  # the buffer drained to its low-water mark: progress
        if self._paused_upstream is not None:
            if not self._paused_upstream.is_closing():
                self._paused_upstream.resume_reading()
            self._paused_upstream = None
            current = self.current
            if current is not None and current.paused_at:
                current.held += self.loop.time() - current.paused_at
                current.paused_at = 0.0
        if self.current is None and self.queue:
            self._start_next()
        self.resume_reading_for(_WRITE)

    # -- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._in_head = True
        if self._timer_kind == "idle":
            self._arm_timer("header")

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        if self._head_size + len(self._url) > self.server.limits.max_header:
            raise Reject(431, "request head too large")
        self._head_size = 0
        self._in_head = False
        self._head_bytes = 0
        self._body_bytes = 0
        if self._timer_kind == "header":
            self._cancel_timer()
        self._body_deadline = 0.0
        ex = build_exchange(self, self.parser, self._headers, self._url)
        self.receiving = ex
        if ex.upgrade:
            self._upgrading = ex
        if self.current is None and not self._write_blocked:
            self.current = ex
            ex.start()
        else:
            self.queue.append(ex)
            self.pause_reading_for(_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.receiving
        if ex is None:
            return
        max_body = self.server.limits.max_body
        if max_body is not None:
            self._body_bytes += len(body)
            if self._body_bytes > max_body:
                raise Reject(413, f"request body larger than {max_body} bytes")
        ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.receiving
        if ex is not None:
            self.receiving = None
            ex.request_complete()

    def _reject(self, status: int, detail: str) -> None:
        """A fatal request error: answer in order, then close; nothing more is read."""
        self._broken = True
        self.server.stats.bad_requests += 1
        self._cancel_timer()
        if self.transport is not None:
            self.transport.pause_reading()
        rx = self.receiving
        self.receiving = None
        if rx is not None and not rx.finished and rx.started:
            rx.close_after = True
            rx.fail(status, "protocol", detail, count_error=False)
            return
        if rx is not None and not rx.started:
            self.queue.remove(rx)
            rx.client_gone()
        ex = Exchange(self, None, b"", client_keep_alive=False,
                      local=error_response(status, detail, True))
        if self.current is None and not self._write_blocked:
            self.current = ex
            ex.start()
        else:
            self.queue.append(ex)

    # -- used by exchanges ------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self.transport is not None:
            self.transport.writelines(parts)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def exchange_done(self, ex: Exchange) -> None:
        if self.current is not ex:
            return
        self.current = None
        if ex.close_after or (self.draining and not self.queue):
            self._linger()
            return
        if self._upgrading is ex:
            if ex.response_status == 101:
                return  # become_tunnel follows at once
            self._upgrade_refused()
            if self.current is not None or self._broken:
                return
        if self.queue:
            if not self._write_blocked:  # else resume_writing starts it
                self._start_next()
            return
        if self.receiving is None and not self._in_head:
            self._arm_timer("idle")

    def _start_next(self) -> None:
        nxt = self.queue.popleft()
        self.current = nxt
        if not self.queue:
            self.resume_reading_for(_PIPELINE)
        nxt.start()

    def _upgrade_refused(self) -> None:
        """The upstream answered an upgrade request without switching: what the client sent
        after it is parsed as ordinary requests, never forwarded as it came."""
        held = self._held
        self._upgrading = None
        self._held = b""
        self.resume_reading_for(_UPGRADE)
        if held:
            self.data_received(held)

    def become_tunnel(self, up: UpstreamConnection, rest: bytes) -> None:
        held = self._held
        self._tunnel = up
        self._upgrading = None
        self._held = b""
        self.receiving = None
        self._cancel_timer()
        up.tunnel_to(self)
        if rest:
            self.write(rest)
        if held and up.transport is not None:
            up.transport.write(held)
        self._read_paused_by.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_reading_for(self, owner: object) -> None:
        if not self._read_paused_by and self.transport is not None:
            self.transport.pause_reading()
        self._read_paused_by.add(owner)

    def resume_reading_for(self, owner: object) -> None:
        paused = self._read_paused_by
        if owner in paused:
            paused.discard(owner)
            if not paused and not self._broken and self.transport is not None \
                    and not self.transport.is_closing():
                self.transport.resume_reading()

    def drain(self) -> None:
        """Graceful shutdown: close now if idle, else after the current answer."""
        if self.current is None and self.receiving is None and not self.queue:
            self._close()

    def close_soon(self) -> None:
        """Close after what is already written has gone out (the tunnel's far side ended)."""
        self._close()

    def _close(self) -> None:
        self._cancel_timer()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():
                # close() waits for the client to read what is left, forever if it does not.
                self._send_watch = True

    def _linger(self) -> None:
        """Close after an answer without resetting the client: send FIN after what is
        written, then read and discard until the client closes, LINGER_BYTES arrive or
        LINGER_TIME passes (nginx's lingering close)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._client_eof:
            self._close()  # nothing more can come: no reset to avoid
            return
        self._broken = self.lingering = True
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.abort()
            return
        self._read_paused_by.clear()
        transport.resume_reading()
        self._timer_kind = "linger"
        if transport.get_write_buffer_size():
            # The answer is still going out (the FIN follows it): the lingering time starts
            # once it has, and the send timeout bounds the wait until then.
            self._send_watch = True
            self.deadline = 0.0
        else:
            self.deadline = self.loop.time() + LINGER_TIME

    # -- timers -----------------------------------------------------------------------------
    def _arm_timer(self, kind: str) -> None:
        timeouts = self.server.timeouts
        delay = timeouts.client_header if kind == "header" else timeouts.idle
        self._timer_kind = kind
        self.deadline = self.loop.time() + delay

    def _cancel_timer(self) -> None:
        self.deadline = 0.0
        self._timer_kind = ""

    def check_deadlines(self, now: float) -> None:
        """Called by the server's sweeper a few times a second."""
        if self.deadline and now >= self.deadline:
            self._on_timer()
        ex = self.current
        if ex is not None:
            ex.check_deadline(now)
        if self.receiving is not None and not self._in_head and not self._broken:
            self._check_body_progress(now)
        if self._send_watch:
            self._check_send_progress(now)

    def _check_body_progress(self, now: float) -> None:
        """The request-body timeout (nginx's client_body_timeout): between two reads of the
        body, not for the whole body. Time the proxy itself stopped reading does not count."""
        if self.reads != self._reads_seen or self._read_paused_by or not self._body_deadline:
            self._reads_seen = self.reads
            self._body_deadline = now + self.server.timeouts.client_body
        elif now >= self._body_deadline:
            self._reject(408, "request body not received in time")

    def _check_send_progress(self, now: float) -> None:
        """The send timeout (nginx's send_timeout): between two writes the client accepted,
        while output waits for it. Progress is the buffer shrinking: while writing is paused
        nothing is added to it (the upstream is paused too)."""
        transport = self.transport
        if transport is None:
            return
        pending = transport.get_write_buffer_size()
        if not pending and not self._write_blocked:
            self._send_watch = False
            self._send_pending = 0
            self._send_deadline = 0.0
            if self.lingering and not self.deadline:
                self.deadline = now + LINGER_TIME  # the answer is out: linger now
            return
        if pending < self._send_pending or not self._send_deadline:
            self._send_deadline = now + self.server.timeouts.client_send
        self._send_pending = pending
        if now >= self._send_deadline:
            # The client stopped reading. Closing would wait for it forever: cut it, with a
            # reset so the kernel drops what it still queues for it (nginx's
            # reset_timedout_connection). The answer in progress counts as a client abort and
            # its upstream connection (paused, unread bytes on it) is closed, not pooled, when
            # the connection is lost.
            self._send_watch = False
            log.info("client %s read nothing for %gs: connection cut",
                     self.client_ip.decode("latin-1"), self.server.timeouts.client_send)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            transport.abort()

    def _on_timer(self) -> None:
        kind = self._timer_kind
        self._cancel_timer()
        if self.transport is None or self.transport.is_closing():
            return
        if kind == "linger":
            self.transport.abort()
            return
        if kind == "header" and self.current is None:
            self._broken = True
            self.write(error_response(408, "request head not received in time", True))
        self._close()

