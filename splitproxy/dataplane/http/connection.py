"""The socket side of one client connection: its transport and flow control, its one timer
(a deadline the server's sweeper checks), and how it closes: a lingering close after an
answer that ends the connection, a reset for a client that stopped reading. The HTTP side
(parsing, exchanges in order, tunnels) is `downstream.DownstreamProtocol`, built on this.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Final, cast

from mypy_extensions import mypyc_attr

from splitproxy.dataplane.http.flow import SENT_ALL, STALLED, WRITE_HIGH_WATER, ClientFlow
from splitproxy.dataplane.http.headers import error_response
from splitproxy.dataplane.http.listener import PLAIN, peer_identity
from splitproxy.dataplane.http.peer import Downstream
from splitproxy.dataplane.http.state import ServerState

log = logging.getLogger("splitproxy.downstream")

# Lingering close (nginx's lingering_close): after an answer that ends the connection, stop
# writing (FIN) and read and discard what the client still sends for up to LINGER_TIME seconds
# or LINGER_BYTES bytes, so the client reads the answer instead of a reset. nginx reads for up
# to 30 s (lingering_time); 5 s is enough for a client to see the answer and stop.
# Not Final: a test patches it, which a compiled module's Final would silently ignore.
LINGER_TIME = 5.0
LINGER_BYTES: Final = 16 << 20

_RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset

# What the connection's one deadline is for.
HEADER: Final = "header"  # the request head must be complete (client_header)
IDLE: Final = "idle"  # a kept-alive connection must send its next request (idle)
LINGER: Final = "linger"  # the lingering close ends


@mypyc_attr(allow_interpreted_subclasses=True)
class ClientConnection(Downstream, asyncio.Protocol):
    """The base of `DownstreamProtocol`: everything about the connection but HTTP."""

    __slots__ = (
        "transport", "deadline", "timer_kind", "broken", "lingering", "_linger_bytes",
        "client_eof",
    )

    def __init__(self, state: ServerState) -> None:
        # The listener's protocol factory sets `listener`; `client_ip` comes from the
        # acceptor or from `connection_made`, `identity` from the TLS handshake.
        super().__init__(state, ClientFlow(state.clock), PLAIN)
        self.transport: asyncio.Transport | None = None
        # One deadline per connection, checked by the server's sweeper: no timer handle is
        # created or cancelled per request.
        self.deadline = 0.0
        self.timer_kind = ""
        self.broken = False  # a fatal error or the connection's end: parse nothing more
        self.lingering = False
        self._linger_bytes = 0
        self.client_eof = False

    def drain(self) -> None:
        """Take no new request; finish those in flight (each protocol knows how)."""
        raise NotImplementedError

    def check_deadlines(self, now: float) -> None:
        """One tick of the timeout sweeper for this connection."""
        raise NotImplementedError

    def _accept(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = self.flow.transport = tcp = cast(asyncio.Transport, transport)
        tcp.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if not self.client_ip:  # else the acceptor said (asking makes a socket object)
            peer = transport.get_extra_info("peername")
            self.client_ip = peer[0].encode("latin-1") if peer else b"unknown"
        if self.listener.tls:
            self.identity = peer_identity(transport)

    def _refuse_overload(self) -> None:
        """Too many client connections: a clear, cheap answer now rather than a client that
        waits for nothing."""
        self.state.stats.count_local("overload")
        self.broken = True
        self.write(error_response(503, "too many client connections", True, retry_after=1))
        self._linger()

    def _linger_data(self, data: bytes) -> None:
        """What a client sends while we linger: read and dropped, up to LINGER_BYTES."""
        if self.lingering:
            self._linger_bytes += len(data)
            if self._linger_bytes > LINGER_BYTES and self.transport is not None:
                self.transport.abort()

    # -- output -----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            writes = self.state.writes
            if writes.gathering:  # asked here: a call saved per write when not
                writes.write(transport, data)
            else:
                transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self.transport is not None:
            self.state.writes.writelines(self.transport, parts)

    def abort(self) -> None:
        if self.transport is not None:
            # What this turn wrote reaches the socket first, as it would have unbatched.
            self.state.writes.release(self.transport)
            self.transport.abort()

    # -- closing ----------------------------------------------------------------------------
    def close_soon(self) -> None:
        """Close after what is already written has gone out (the tunnel's far side ended)."""
        self._close()

    def _close(self) -> None:
        self._cancel_timer()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.state.writes.release(transport)  # what this turn wrote goes out first
            transport.close()
            if transport.get_write_buffer_size():
                # close() waits for the client to read what is left, forever if it does not.
                self.flow.watch_send()

    def _linger(self) -> None:
        """Close after an answer without resetting the client: send FIN after what is
        written, then read and discard until the client closes, LINGER_BYTES arrive or
        LINGER_TIME passes (nginx's lingering close)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.client_eof:
            self._close()  # nothing more can come: no reset to avoid
            return
        self.broken = self.lingering = True
        self.state.writes.release(transport)  # what this turn wrote goes out first
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.abort()
            return
        self.flow.read_freely(discard=True)
        self.timer_kind = LINGER
        if transport.get_write_buffer_size():
            # The answer is still going out (the FIN follows it): the lingering time starts
            # once it has, and the send timeout bounds the wait until then.
            self.flow.watch_send()
            self.deadline = 0.0
        else:
            self.deadline = self.state.now() + LINGER_TIME

    # -- timers -----------------------------------------------------------------------------
    def _arm_timer(self, kind: str) -> None:
        state = self.state
        delay = state.header_timeout if kind == HEADER else state.idle_timeout
        self.timer_kind = kind
        self.deadline = state.now() + delay

    def _cancel_timer(self) -> None:
        self.deadline = 0.0
        self.timer_kind = ""

    def _timer_fired(self) -> str | None:
        """The deadline passed: its kind (HEADER, IDLE), for the protocol to act on, or None
        when nothing is left to do (the transport is closing, or the lingering close ended
        and the connection was cut)."""
        kind = self.timer_kind
        self._cancel_timer()
        if self.transport is None or self.transport.is_closing():
            return None
        if kind == LINGER:
            self.transport.abort()
            return None
        return kind

    def _check_send_progress(self, now: float) -> None:
        """The send timeout, while output waits for the client (see `flow.send_progress`)."""
        timeout = self.state.timeouts.client_send
        progress = self.flow.send_progress(now, timeout)
        if progress == SENT_ALL:
            if self.lingering and not self.deadline:
                self.deadline = now + LINGER_TIME  # the answer is out: linger now
        elif progress == STALLED and self.transport is not None:
            # The client stopped reading. Closing would wait for it forever: cut it, with a
            # reset so the kernel drops what it still queues for it (nginx's
            # reset_timedout_connection). The answer in progress counts as a client abort and
            # its upstream connection (paused, unread bytes on it) is closed, not pooled, when
            # the connection is lost.
            log.info("client %s read nothing for %gs: connection cut",
                     self.client_ip.decode("latin-1"), timeout)
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            self.transport.abort()
