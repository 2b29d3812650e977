"""Writes gathered over one turn of the event loop and sent at its end, one write per
transport (as Envoy's connections do: a write only marks the socket, the bytes go out when the
dispatcher gets to it).

Why: every write that reaches a socket whose reader sleeps wakes that reader, and on a
virtual machine a wake-up on another vCPU is a trip through the host (an inter-processor
interrupt; `perf` shows it as `sock_def_readable` -> `_raw_spin_unlock_irqrestore`). Under
load one turn handles many connections; written as each is handled, the peers (clients, the
upstream) are woken once per write, and the host counts the trips as steal. Written together
at the end of the turn, the first write wakes a peer and the others find it awake. The README
("Writes batched per loop turn") has the measurements.

Order is kept: while the batch gathers, every write of an HTTP/1.1 client connection and of
an upstream connection goes through it, and nothing written later overtakes what waits.
Before the proxy closes a transport, ends its output or aborts it (`release`), what waits for
it is written, as it would have been without the batch; a transport lost (the peer reset it)
drops it, as its own buffer would.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from splitproxy.dataplane.http.state import EventLoop

log = logging.getLogger("splitproxy.downstream")


# Only small writes wait: heads and whole small answers, which are what a turn under load is
# made of. A larger one (a body's packet, a vector of parts) goes out at once, after what waits
# for its transport, so flow control (a transport's pause_writing when its buffer passes the
# high-water mark) still acts on the write that crossed it; at most this much waits per
# transport, out of the buffer's sight.
SMALL: Final = 16384


class WriteBatch:
    """The small writes of the current loop turn, by transport, in the order they were made."""

    __slots__ = ("_loop", "_pending", "busy", "gather_from", "gathering", "h2_busy")

    def __init__(self, loop: EventLoop) -> None:
        self._loop = loop
        self._pending: dict[asyncio.Transport, bytes] = {}
        # Client connections with an exchange in flight (`busy_change`, kept by
        # `DownstreamProtocol`). With one, a turn holds one connection's event and there is
        # nothing to gather: writes go straight out, as without a batch (gathering costs a
        # callback per turn, about 4,700 instructions).
        self.busy = 0
        self.gather_from = 2  # gather when at least this many are busy (tests: 0, always)
        # Whether writes go through `write` (the writers ask, to save a call when not): true
        # while enough connections are busy, and always while anything waits, so that nothing
        # written later can overtake it.
        self.gathering = False
        # HTTP/2 streams in flight, kept by `H2Server`: their writes go through their
        # connection, not the batch, so they do not make it gather; the busy poller counts
        # them with `busy` (`loaded`).
        self.h2_busy = 0

    def busy_change(self, change: int) -> None:
        self.busy += change
        self.gathering = self.busy >= self.gather_from or bool(self._pending)

    def loaded(self) -> bool:
        """Two or more requests in flight (or writes waiting), of either protocol."""
        return self.gathering or self.busy + self.h2_busy >= 2

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        pending = self._pending
        if pending:
            waiting = pending.get(transport)
            if waiting is not None:
                if len(waiting) + len(data) < SMALL:
                    pending[transport] = waiting + data
                    return
                del pending[transport]
                transport.write(waiting)
                transport.write(data)
                return
        if len(data) >= SMALL or not self.gathering or transport.is_closing():
            # A closing transport (the peer's FIN was read earlier in this turn) still takes
            # writes until its connection_lost, which may run before the flush: write now.
            transport.write(data)
            return
        if not pending:
            # The first write of the turn: send them all once this turn's callbacks are done
            # (uvloop runs it before it polls again: no extra system call).
            self._loop.call_soon(self.flush)
        pending[transport] = data

    def writelines(self, transport: asyncio.Transport, parts: list[bytes]) -> None:
        """At once, after what waits for `transport` (gathering or not)."""
        if self._pending:
            self.release(transport)
        transport.writelines(parts)

    def release(self, transport: asyncio.Transport) -> None:
        """Write now what waits for `transport`: it is about to close or end its output."""
        if not self._pending:
            return
        waiting = self._pending.pop(transport, None)
        if waiting is not None:
            transport.write(waiting)

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = {}
        self.gathering = self.busy >= self.gather_from
        for transport, data in pending.items():
            if not transport.is_closing():
                try:
                    transport.write(data)
                except RuntimeError as exc:
                    # A write after the transport's output ended (write_eof): a bug in the
                    # caller, which `release` before write_eof keeps from happening. One
                    # transport's error must not stop the others' writes.
                    log.error("write to a transport that cannot take it: %s", exc)
                    transport.abort()
