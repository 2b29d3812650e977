"""Rollout state shared by every replica, in Redis (redis-py's asyncio client).

- One key per route *and revision* (`<prefix>route:<name>:<revision>`): replicas still on an
  old config and replicas on a new one never overwrite each other's rollout.
- Writes are compare-and-set on the state's `seq` (a Lua script), then a pub/sub notice;
  every replica also re-reads twice a second, so a transition made anywhere is applied
  everywhere within a second even if a notice is lost.
- A lease (`<prefix>lease`) lets one replica at a time run the step timers; another takes
  over when its holder stops renewing it.
- Redis down: nothing fails. The engine keeps the last known state, writes are retried with
  backoff, `/status` and `splitproxy_state_store_up` say the store is unreachable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from splitproxy.rollout import RouteState

log = logging.getLogger("splitproxy.store")

SYNC_INTERVAL = 0.5
STATE_TTL_MS = 14 * 24 * 3600 * 1000  # old revisions fade away after two weeks
MAX_BACKOFF = 5.0

# Compare-and-set: write ARGV[2] only if the stored seq equals ARGV[1] (-1: nothing stored
# yet). Returns nil when written, else the stored state that won.
_PUT = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local seq = cjson.decode(cur)['seq'] or 0
  if seq ~= tonumber(ARGV[1]) then return cur end
elseif tonumber(ARGV[1]) ~= -1 then
  -- expired or deleted meanwhile: the write is still the newest thing we know
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return false
"""

# Take the lease if free, extend it if ours.
_LEASE = """
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class RedisStore:
    shared = True

    def __init__(self, url: str, prefix: str, lease: float) -> None:
        self.url = url
        self.prefix = prefix
        self.lease = lease
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.channel = f"{prefix}events"
        self.up = False
        self.last_error: str | None = "not connected yet"
        self._redis = aioredis.Redis.from_url(url, socket_timeout=1.0,
                                               socket_connect_timeout=1.0)
        self._put = self._redis.register_script(_PUT)
        self._lease_script = self._redis.register_script(_LEASE)
        self._leader_until = 0.0
        self._retry_at = 0.0
        self._backoff = 0.25
        self._tasks: list[asyncio.Task[None]] = []
        self._on_change: Callable[[], None] = lambda: None

    def key(self, route: str, revision: str) -> str:
        return f"{self.prefix}route:{route}:{revision}"

    # -- connection health ------------------------------------------------------------------
    def available(self, now: float) -> bool:
        """False during the backoff after a failure: callers skip the store meanwhile."""
        return now >= self._retry_at

    def _ok(self) -> None:
        if not self.up:
            log.info("state store %s reachable", self.url)
        self.up = True
        self.last_error = None
        self._backoff = 0.25

    def _failed(self, exc: Exception) -> None:
        loop = asyncio.get_running_loop()
        if self.up or self.last_error is None or "not connected" in self.last_error:
            log.error("state store %s unreachable (%s): serving the last known state",
                      self.url, exc)
        self.up = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._retry_at = loop.time() + self._backoff
        self._backoff = min(MAX_BACKOFF, self._backoff * 2)
        self._leader_until = 0.0

    # -- state ------------------------------------------------------------------------------
    async def get(self, keys: dict[str, str]) -> dict[str, RouteState] | None:
        """{route: state} for the given {route: revision}; None when unreachable."""
        if not keys or not self.available(asyncio.get_running_loop().time()):
            return None if keys else {}
        names = list(keys)
        try:
            values = await self._redis.mget([self.key(n, keys[n]) for n in names])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._ok()
        out = {}
        for name, raw in zip(names, values, strict=True):
            if raw is None:
                continue
            try:
                out[name] = RouteState.from_json(json.loads(raw))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("ignoring corrupt state for route %s in redis: %s", name, exc)
        return out

    async def put(self, name: str, state: RouteState, expected_seq: int) -> RouteState | None:
        """Compare-and-set. None: written. A state: someone else's newer state won.
        Raises ConnectionError when Redis cannot be reached (the caller retries later)."""
        if not self.available(asyncio.get_running_loop().time()):
            raise ConnectionError(f"backing off after: {self.last_error}")
        body = json.dumps(state.to_json())
        try:
            winner = await self._put(
                keys=[self.key(name, state.revision)],
                args=[expected_seq, body, STATE_TTL_MS, self.channel, name],
            )
        except (RedisError, OSError) as exc:
            self._failed(exc)
            raise ConnectionError(str(exc)) from exc
        self._ok()
        if winner is None:
            return None
        return RouteState.from_json(json.loads(winner))

    # -- lease ------------------------------------------------------------------------------
    def is_leader(self, now: float) -> bool:
        return now < self._leader_until

    async def _renew_lease(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if self.available(now):
                try:
                    got = await self._lease_script(
                        keys=[f"{self.prefix}lease"],
                        args=[self.identity, int(self.lease * 1000)],
                    )
                    self._ok()
                    was = self.is_leader(now)
                    # Keep a margin: stop acting before the lease can have passed to another.
                    self._leader_until = now + self.lease * 0.8 if got else 0.0
                    if bool(got) != was:
                        log.info("rollout lease %s by %s", "taken" if got else "lost",
                                 self.identity)
                except (RedisError, OSError) as exc:
                    self._failed(exc)
            await asyncio.sleep(self.lease / 4)

    # -- notifications ----------------------------------------------------------------------
    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(self.channel)
                # Subscribed again after an outage: Redis is back, stop backing off now.
                self._retry_at = 0.0
                self._backoff = 0.25
                self._on_change()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._on_change()
            except (RedisError, OSError):
                await asyncio.sleep(1.0)  # the periodic re-read covers the gap

    async def start(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        loop = asyncio.get_running_loop()
        try:
            await self._redis.ping()
            self._ok()
        except (RedisError, OSError) as exc:
            self._failed(exc)
        self._tasks = [loop.create_task(self._renew_lease()), loop.create_task(self._listen())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, RedisError, OSError):
                pass
        if self.is_leader(asyncio.get_running_loop().time()):
            try:  # hand the lease over at once instead of after it times out
                if await self._redis.get(f"{self.prefix}lease") == self.identity.encode():
                    await self._redis.delete(f"{self.prefix}lease")
            except (RedisError, OSError):
                pass
        await self._redis.aclose()

    # -- the file-store interface (unused for a shared store) -------------------------------
    async def load(self) -> dict[str, RouteState]:
        return {}

    async def save(self, states: dict[str, RouteState]) -> None:
        return None
