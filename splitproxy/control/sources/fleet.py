"""Counters shared through Redis, so that one replica judges the whole fleet's traffic.

With `analysis.source: local` and the Redis store, every replica publishes its cumulative
counters of each guarded route once per interval, under a key of its own with a TTL:
`<prefix>v2:counts:<route>:<replica>` (JSON), listed in the sorted set
`<prefix>v2:counts:<route>` (score: when it last published). The lease holder, which alone
judges, reads them all and takes exact differences per replica (`tally.CounterDiff`): a
replica that restarts publishes under a new id (its counts start from 0), one that dies
expires with its key, and one that misses a beat is not counted twice when it comes back.
So the fleet spends alpha once, as if it were one process.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from splitproxy.rollout.tally import Series

log = logging.getLogger("splitproxy.control.sources.fleet")

INDEX_KEEP = 3600.0  # a replica silent this long leaves the index (its key expired long ago)


class CountsBoard(Protocol):
    """Where replicas leave their counters for the judge."""

    replica: str

    async def publish(self, route: str, series: Mapping[Series, float], ttl: float) -> None:
        """This replica's cumulative series of `route`; raises on failure."""
        ...

    async def collect(self, route: str) -> dict[Series, float]:
        """Every live replica's series of `route`, each told apart by its replica id."""
        ...


def encode(series: Mapping[Series, float]) -> str:
    return json.dumps({"\t".join(key): value for key, value in series.items()})


def decode(replica: str, raw: bytes | str) -> dict[Series, float]:
    """One replica's published series; raises ValueError on anything else."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("expected an object")
    out: dict[Series, float] = {}
    for key, value in data.items():
        parts = str(key).split("\t")
        if len(parts) != 3 or isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"bad series {key!r}")
        version, metric, which = parts
        out[(version, metric, f"{replica}|{which}")] = float(value)
    return out


class RedisCounts:
    """A `CountsBoard` on the state store's Redis connection."""

    def __init__(self, redis: Any, prefix: str, replica: str) -> None:
        self._redis = redis
        self.prefix = prefix
        self.replica = replica

    def index(self, route: str) -> str:
        return f"{self.prefix}v2:counts:{route}"

    def key(self, route: str, replica: str) -> str:
        return f"{self.prefix}v2:counts:{route}:{replica}"

    async def publish(self, route: str, series: Mapping[Series, float], ttl: float) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self.key(route, self.replica), encode(series), px=int(ttl * 1000))
            pipe.zadd(self.index(route), {self.replica: time.time()})
            await pipe.execute()

    async def collect(self, route: str) -> dict[Series, float]:
        index = self.index(route)
        await self._redis.zremrangebyscore(index, "-inf", time.time() - INDEX_KEEP)
        replicas = [r.decode() if isinstance(r, bytes) else str(r)
                    for r in await self._redis.zrange(index, 0, -1)]
        if not replicas:
            return {}
        values = await self._redis.mget([self.key(route, r) for r in replicas])
        out: dict[Series, float] = {}
        for replica, raw in zip(replicas, values, strict=True):
            if raw is None:
                continue  # expired: that replica is gone
            try:
                out.update(decode(replica, raw))
            except ValueError as exc:  # not ours: that replica's counts are not seen
                log.warning("ignoring unreadable counts of replica %s for route %s: %s",
                            replica, route, exc)
        return out
