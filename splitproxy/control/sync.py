"""The rollout owner's link to its state store: writes that land, and other replicas' news.

- Writes: the newest decided state of each route is written by compare-and-set on the seq the
  store is known to hold. A failed write stays pending (shown in /status) and is retried
  with backoff until it lands; losing the compare-and-set hands the winner back to the owner
  as an event, which decides what to keep.
- Reads: on a store notice and every `store.refresh_interval`, the states other replicas
  stored come back to the owner as events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from splitproxy.control.clock import Clock
from splitproxy.control.status import PendingWrite
from splitproxy.control.stores.store import StateStore, StoreUnavailable
from splitproxy.control.tasks import cancel_and_wait, first
from splitproxy.rollout import RouteState
from splitproxy.rollout.events import PeerUpdate

log = logging.getLogger("splitproxy.control.stores.store")

BACKOFF = 0.25
MAX_BACKOFF = 5.0


@dataclass
class _Pending:
    state: RouteState
    since: float  # wall clock
    error: str | None = None
    attempts: int = 0
    landed: list[asyncio.Future[bool]] = field(default_factory=list)


class StateSync:
    def __init__(self, store: StateStore, clock: Clock,
                 post: Callable[[str, PeerUpdate], None],
                 current: Callable[[], dict[str, RouteState]]) -> None:
        self.store = store
        self.clock = clock
        self._post = post  # hands an event for a route to the owner
        self._current = current  # the owner's states, to skip news it already has
        self._pending: dict[str, _Pending] = {}
        self._retired: list[tuple[str, str]] = []
        self._known: dict[str, tuple[str, int]] = {}  # route -> (identity, seq) in the store
        self._work = asyncio.Event()
        self._news = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- the owner's side -------------------------------------------------------------------
    def note_stored(self, route: str, identity: str, seq: int) -> None:
        self._known[route] = (identity, seq)

    def submit(self, route: str, state: RouteState) -> asyncio.Future[bool]:
        """Write `state` (replacing an older pending one). The future is True once it (or a
        later state of the route) landed, False if another replica's write won."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        old = self._pending.get(route)
        pending = _Pending(state, self.clock.time(), landed=[fut])
        if old is not None:
            pending.since, pending.error, pending.attempts = old.since, old.error, old.attempts
            pending.landed += old.landed
        self._pending[route] = pending
        self._work.set()
        return fut

    def retire(self, route: str, identity: str) -> None:
        self._retired.append((route, identity))
        self._work.set()

    def has_pending(self, route: str) -> bool:
        return route in self._pending

    def pending(self) -> dict[str, PendingWrite]:
        """For /status: writes that have not landed yet, and why."""
        return {name: PendingWrite(since=p.since, seq=p.state.seq, phase=p.state.phase,
                                   attempts=p.attempts, error=p.error)
                for name, p in self._pending.items()}

    def changed(self) -> None:
        """The store says another replica wrote (or it is reachable again)."""
        self._news.set()
        self._work.set()

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write_forever())]
        if self.store.refresh_interval is not None:
            self._tasks.append(loop.create_task(self._read_forever(self.store.refresh_interval)))

    async def flush(self, timeout: float) -> None:
        """Waits (real time, at most `timeout`) until nothing is pending, or one attempt
        failed for everything that is."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._pending and asyncio.get_running_loop().time() < deadline:
            if all(p.attempts > 0 and p.error for p in self._pending.values()):
                return
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._pending or self._retired:
            await self._write_all()  # a last attempt for decisions made just before

    # -- writing ----------------------------------------------------------------------------
    async def _write_forever(self) -> None:
        backoff = BACKOFF
        while True:
            await self._work.wait()
            self._work.clear()
            if await self._write_all():
                backoff = BACKOFF
                continue
            await first(self.clock.sleep(backoff), self._work.wait())
            self._work.set()
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _write_all(self) -> bool:
        """One attempt at everything pending; False if something could not be written."""
        ok = True
        for name in list(self._pending):
            pending = self._pending.get(name)
            if pending is None:
                continue
            state = pending.state
            known = self._known.get(name)
            expected = known[1] if known is not None and known[0] == state.identity else -1
            pending.attempts += 1
            try:
                # Shielded: a shutdown that cancels us must not cut a file write in half and
                # race the last attempt (the file store's lock then orders the two).
                winner = await asyncio.shield(self.store.put(name, state, expected))
            except StoreUnavailable as exc:
                pending.error = str(exc)
                if pending.attempts == 1:
                    log.error("rollout state of route %s not written (%s): retrying until "
                              "it lands", name, exc)
                ok = False
                continue
            if pending.error is not None:
                log.info("rollout state of route %s written after %d attempts", name,
                         pending.attempts)
            current = self._pending.get(name)
            if winner is None:
                self._known[name] = (state.identity, state.seq)
                if current is pending:
                    del self._pending[name]
                    _resolve(pending, True)
                # else: a later decision was submitted meanwhile; it is written on top
            else:
                self._known[name] = (winner.identity, winner.seq)
                # Anything decided on top of the lost write is void: the owner decides again.
                if current is not None:
                    del self._pending[name]
                    _resolve(current, False)
                self._post(name, PeerUpdate(winner, lost_race=True))
        while self._retired:
            route, identity = self._retired[0]
            try:
                await self.store.retire(route, identity)
            except StoreUnavailable:
                return False
            self._retired.pop(0)
        return ok

    # -- reading ----------------------------------------------------------------------------
    async def _read_forever(self, interval: float) -> None:
        while True:
            await first(self.clock.sleep(interval), self._news.wait())
            self._news.clear()
            asked = {n: s.identity for n, s in self._current().items()}
            stored = await self.store.fetch(asked)
            if stored is None:
                continue  # unreachable: nothing learnt
            for name, mine in self._current().items():
                if name in self._pending or asked.get(name) != mine.identity:
                    continue  # our own write's compare-and-set settles the matter
                theirs = stored.get(name)
                if theirs is None:
                    # Gone from the store (a Redis restarted without its data): put back what
                    # this replica serves, so that a replica starting now finds it.
                    log.warning("rollout state of route %s missing in the store: writing it "
                                "again", name)
                    self._known.pop(name, None)
                    self.submit(name, mine)
                elif theirs.seq > mine.seq:
                    self._post(name, PeerUpdate(theirs))


def _resolve(pending: _Pending, landed: bool) -> None:
    for fut in pending.landed:
        if not fut.done():
            fut.set_result(landed)
