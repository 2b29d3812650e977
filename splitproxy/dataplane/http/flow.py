"""Flow control (as uvicorn's flow_control.py): memory per client connection stays bounded,
whatever the client and the upstream do.

Nothing more is read from a client while an answer waits to be written beyond the write
buffer's high-water mark (the transport paused us), while a request waits behind another
(pipelining), while an upgrade is undecided, while a request body waits for an upstream
connection beyond `PENDING_HIGH_WATER`, or while the upstream does not take the body as fast
as the client sends it; and no new answer is started while the client is not reading the
previous one. The upstream connection whose answer the client does not read is paused too,
and the time it is held does not count against its version. A client that stops reading
altogether is cut after `timeouts.client_send` without progress (the send timeout, checked
by the sweeper through `send_progress`), so it cannot hold the upstream connection its answer
paused.

Each pause of the client's reading has an owner (`PIPELINE`, `WRITE`, `UPGRADE`, an exchange
holding body bytes, an upstream connection that does not take them); reading resumes when no
owner is left.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    from collections.abc import Callable

    from splitproxy.dataplane.http.exchange import Exchange

# Both directions: above this many unsent bytes a transport pauses its protocol's writing.
WRITE_HIGH_WATER: Final = 256 * 1024
# Request body held for an upstream connection that is not there yet.
PENDING_HIGH_WATER: Final = 256 * 1024

PIPELINE: Final = "pipeline"  # a request waits behind another
WRITE: Final = "write"  # the client does not read what we write
UPGRADE: Final = "upgrade"  # an upgrade request waits for the upstream's 101 (or not)

# What `send_progress` found.
SENDING: Final = 0
SENT_ALL: Final = 1
STALLED: Final = 2


@mypyc_attr(allow_interpreted_subclasses=True)
class ClientFlow:
    """Back-pressure of one client connection, both ways."""

    __slots__ = (
        "clock", "transport", "paused_by", "frozen", "write_blocked", "paused_upstream",
        "send_watch", "send_pending", "send_deadline",
    )

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock  # the server's duration clock (`ServerState.clock`)
        self.transport: asyncio.Transport | None = None  # set by connection_made
        # The owners of the pause: a tuple, not a set (an empty set is 216 bytes per idle
        # connection; there are rarely more than two owners at once).
        self.paused_by: tuple[object, ...] = ()
        self.frozen = False  # reading is stopped or discarded for good: owners do not matter
        self.write_blocked = False  # the transport said pause_writing: start no new answer
        self.paused_upstream: asyncio.Transport | None = None  # paused for the slow client
        # Send timeout: watched while output waits for the client (paused writing, or a close
        # that waits for the buffer to drain); only then does the sweeper look at it.
        self.send_watch = False
        self.send_pending = 0  # bytes waiting to be written, as the sweeper last saw
        self.send_deadline = 0.0

    # -- the client's reading -----------------------------------------------------------------
    def pause_reading_for(self, owner: object) -> None:
        paused = self.paused_by
        if not paused and self.transport is not None:
            self.transport.pause_reading()
        if owner not in paused:
            self.paused_by = (*paused, owner)

    def resume_reading_for(self, owner: object) -> None:
        paused = self.paused_by
        if owner in paused:
            paused = self.paused_by = tuple(o for o in paused if o != owner)
            if not paused and not self.frozen and self.transport is not None \
                    and not self.transport.is_closing():
                self.transport.resume_reading()

    def stop_reading(self) -> None:
        """A fatal request error: nothing more is read, whoever would resume."""
        self.frozen = True
        if self.transport is not None:
            self.transport.pause_reading()

    def read_freely(self, discard: bool) -> None:
        """Read whatever comes from now on: a tunnel (its peer may still pause it) or, with
        `discard`, a lingering close (nothing pauses it again)."""
        self.frozen = discard
        self.paused_by = ()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    # -- the client's writing -----------------------------------------------------------------
    def client_stalled(self, up: asyncio.Transport | None, exchange: Exchange | None,
                       tunnel: bool) -> None:
        """The client's buffer is full (pause_writing): stop reading the upstream `up` whose
        answer (or tunnel) fills it; `exchange` is held for the client from now on."""
        self.write_blocked = True
        self.send_watch = True
        if not tunnel:
            self.pause_reading_for(WRITE)
        if up is not None:
            up.pause_reading()
            self.paused_upstream = up
            if exchange is not None and not exchange.paused_at:
                # Held for the client, not the version's time (see Lifecycle._upstream_time).
                exchange.paused_at = self.clock()

    def client_drained(self, exchange: Exchange | None) -> None:
        """The client's buffer drained to its low-water mark (resume_writing): progress."""
        self.write_blocked = False
        self.send_deadline = 0.0
        up = self.paused_upstream
        if up is not None:
            if not up.is_closing():
                up.resume_reading()
            self.paused_upstream = None
            if exchange is not None and exchange.paused_at:
                exchange.held += self.clock() - exchange.paused_at
                exchange.paused_at = 0.0
        if exchange is not None:
            exchange.client_writable()

    def holds(self, up: asyncio.Transport | None) -> bool:
        """We stopped reading `up` because the client is slow: not the upstream's delay."""
        return self.paused_upstream is not None and self.paused_upstream is up

    def release(self, up: asyncio.Transport | None) -> None:
        """`up`'s answer ended: it must not stay paused (a paused connection is never
        pooled). The caller checks `paused_upstream` first: the common case is no call."""
        if self.paused_upstream is up:
            if up is not None and not up.is_closing():
                up.resume_reading()
            self.paused_upstream = None

    def watch_send(self) -> None:
        """Output waits for the client (a close that waits for the buffer to drain)."""
        self.send_watch = True

    def send_progress(self, now: float, timeout: float) -> int:
        """The send timeout (nginx's send_timeout): between two writes the client accepted,
        while output waits for it. Progress is the buffer shrinking: while writing is paused
        nothing is added to it (the upstream is paused too). Returns SENDING, SENT_ALL (the
        watch ends) or STALLED (the client read nothing for `timeout`: cut it)."""
        transport = self.transport
        if transport is None:
            return SENDING
        pending = transport.get_write_buffer_size()
        if not pending and not self.write_blocked:
            self.send_watch = False
            self.send_pending = 0
            self.send_deadline = 0.0
            return SENT_ALL
        if pending < self.send_pending or not self.send_deadline:
            self.send_deadline = now + timeout
        self.send_pending = pending
        if now >= self.send_deadline:
            self.send_watch = False
            return STALLED
        return SENDING
