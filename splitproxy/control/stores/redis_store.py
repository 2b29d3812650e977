"""Rollout state shared by every replica, in Redis (redis-py's asyncio client).

- One key per route *and identity* (`<prefix>v2:route:<name>:<identity>`): replicas still on
  an old config and replicas on a new one never overwrite each other's rollout. A second key
  per route (`<prefix>v2:latest:<name>`) names the identity written last, so a new rollout
  knows what ran before it (blue-green's color that served).
- Writes are compare-and-set on the state's `seq` (a Lua script), then a pub/sub notice;
  every replica also re-reads twice a second.
- A route's current key has no expiry; every replica on it refreshes that (PERSIST) once a
  minute. A key its route left (another identity, or the route gone) expires after two weeks.
- Keys of format 1 (`<prefix>route:<name>:<revision hash>`) are read once, to migrate.
- A lease (`<prefix>lease`) lets one replica at a time run the step timers and judge; another
  takes over when its holder stops renewing it.
- With `analysis.source: local`, every replica shares its counters for the judge
  (`<prefix>v2:counts:<route>:<replica>`, see `fleet`).
- Redis down: nothing fails. The engine keeps the last known state and retries its writes
  with backoff; `/status` and `splitproxy_state_store_up` say the store is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from splitproxy.config.models import Backend
from splitproxy.control.sources.fleet import RedisCounts
from splitproxy.control.stores.store import Loaded, StoreUnavailable, Wanted
from splitproxy.control.tasks import cancel_and_wait
from splitproxy.rollout import RouteState

log = logging.getLogger("splitproxy.control.stores.store")

SYNC_INTERVAL = 0.5
RETIRED_TTL_MS = 14 * 24 * 3600 * 1000  # a key its route left fades away after two weeks
REFRESH_EVERY = 60.0  # seconds between PERSISTs of the keys in use
MAX_BACKOFF = 5.0

# Compare-and-set: write ARGV[2] only if the stored seq equals ARGV[1] (-1: nothing stored
# yet). Returns nil when written, else the stored state that won. No expiry: the key lives
# while its route has this identity.
_PUT = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local seq = cjson.decode(cur)['seq'] or 0
  if seq ~= tonumber(ARGV[1]) then return cur end
end
-- (nothing stored although we expected a seq: an empty Redis after a restart; ours is the
-- newest state we know)
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
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
    refresh_interval: float | None = SYNC_INTERVAL

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
        self._refreshed_at = float("-inf")
        self._tasks: list[asyncio.Task[None]] = []
        self._on_change: Callable[[], None] = lambda: None

    def key(self, route: str, identity: str) -> str:
        return f"{self.prefix}v2:route:{route}:{identity}"

    def latest_key(self, route: str) -> str:
        return f"{self.prefix}v2:latest:{route}"

    def legacy_key(self, route: str, revision: str) -> str:
        return f"{self.prefix}route:{route}:{revision}"

    # -- connection health ------------------------------------------------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def available(self, now: float) -> bool:
        """False during the backoff after a failure: reads skip the store meanwhile."""
        return now >= self._retry_at

    def _ok(self) -> None:
        if not self.up:
            log.info("state store %s reachable", self.url)
        self.up = True
        self.last_error = None
        self._backoff = 0.25

    def _failed(self, exc: Exception) -> None:
        if self.up or self.last_error is None or "not connected" in self.last_error:
            log.error("state store %s unreachable (%s): serving the last known state",
                      self.url, exc)
        self.up = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._retry_at = self._now() + self._backoff
        self._backoff = min(MAX_BACKOFF, self._backoff * 2)
        self._leader_until = 0.0

    # -- state ------------------------------------------------------------------------------
    def _parse(self, name: str, raw: bytes | str | None) -> RouteState | None:
        if raw is None:
            return None
        try:
            return RouteState.from_json(json.loads(raw))
        except (ValueError, TypeError, KeyError) as exc:
            log.error("ignoring corrupt state for route %s in redis: %s", name, exc)
            return None

    async def load(self, wanted: Mapping[str, Wanted]) -> dict[str, Loaded] | None:
        names = list(wanted)
        if not names:
            return {}
        try:
            values = await self._redis.mget([self.key(n, wanted[n].identity) for n in names])
            out: dict[str, Loaded] = {}
            for name, raw in zip(names, values, strict=True):
                state = self._parse(name, raw)
                if state is not None:
                    out[name] = Loaded(state, None)
                    continue
                out[name] = Loaded(None, await self._previous(name, wanted[name]))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._ok()
        return out

    async def _previous(self, name: str, want: Wanted) -> RouteState | None:
        """What ran before: format 1's key for this config, else the latest identity's."""
        for revision in want.legacy:
            state = self._parse(name, await self._redis.get(self.legacy_key(name, revision)))
            if state is not None:
                return state
        latest = await self._redis.get(self.latest_key(name))
        if latest is None:
            return None
        identity = latest.decode() if isinstance(latest, bytes) else latest
        return self._parse(name, await self._redis.get(self.key(name, identity)))

    async def fetch(self, identities: Mapping[str, str]) -> dict[str, RouteState] | None:
        if not identities:
            return {}
        now = self._now()
        if not self.available(now):
            return None
        names = list(identities)
        keys = [self.key(n, identities[n]) for n in names]
        try:
            values = await self._redis.mget(keys)
            if now - self._refreshed_at >= REFRESH_EVERY:
                # Keys in use never expire, even if a replica that moved on set a TTL.
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.persist(key)
                    await pipe.execute()
                self._refreshed_at = now
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._ok()
        out = {}
        for name, raw in zip(names, values, strict=True):
            state = self._parse(name, raw)
            if state is not None:
                out[name] = state
        return out

    async def put(self, route: str, state: RouteState, expected: int) -> RouteState | None:
        body = json.dumps(state.to_json())
        try:
            winner = await self._put(
                keys=[self.key(route, state.identity), self.latest_key(route)],
                args=[expected, body, state.identity, self.channel, route],
            )
        except (RedisError, OSError) as exc:
            self._failed(exc)
            raise StoreUnavailable(self.last_error) from exc
        self._ok()
        if winner is None:
            return None
        return RouteState.from_json(json.loads(winner))

    async def retire(self, route: str, identity: str) -> None:
        try:
            await self._redis.pexpire(self.key(route, identity), RETIRED_TTL_MS)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            raise StoreUnavailable(self.last_error) from exc

    def counts_board(self) -> RedisCounts:
        return RedisCounts(self._redis, self.prefix, self.identity)

    # -- lease ------------------------------------------------------------------------------
    def is_leader(self) -> bool:
        """On real time, as Redis expires the lease: not on the engine's (injectable) clock."""
        return self._now() < self._leader_until

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
                    was = now < self._leader_until
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
            pubsub = self._redis.pubsub()
            try:
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
            finally:
                # Its connection goes back to the pool: dropped instead, each outage left one
                # more in the pool's in-use set for the life of the process.
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def open(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        loop = asyncio.get_running_loop()
        try:
            await self._redis.ping()
            self._ok()
        except (RedisError, OSError) as exc:
            self._failed(exc)
        self._tasks = [loop.create_task(self._renew_lease()), loop.create_task(self._listen())]

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        if self.is_leader():
            try:  # hand the lease over at once instead of after it times out
                if await self._redis.get(f"{self.prefix}lease") == self.identity.encode():
                    await self._redis.delete(f"{self.prefix}lease")
            except (RedisError, OSError):
                pass
        await self._redis.aclose()

    def describe(self) -> dict[str, Any]:
        return {"backend": Backend.REDIS, "url": self.url, "up": self.up, "error": self.last_error,
                "leader": self.is_leader()}
