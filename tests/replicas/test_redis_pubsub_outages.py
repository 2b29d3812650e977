"""The store's subscription across Redis outages: each outage's PubSub gives its connection
back, so the client's pool does not keep one more connection per outage (a leak that grew with
every outage, found while checking the frozen start-up heap for leaks)."""

from __future__ import annotations

from splitproxy.control.stores.redis_store import RedisStore
from tests.support.processes import RedisServer
from tests.support.waiting import wait_until

OUTAGES = 3


async def test_each_outage_gives_its_subscription_connection_back(
        redis_server: RedisServer, key_prefix: str) -> None:
    store = RedisStore(redis_server.url, key_prefix, lease=2.0)
    changes: list[None] = []
    await store.open(lambda: changes.append(None))
    pool = store._redis.connection_pool
    try:
        await wait_until(lambda: len(changes) >= 1, 10, "the first subscription")
        for outage in range(1, OUTAGES + 1):
            await redis_server.stop()
            await redis_server.start()
            wanted = outage + 1  # each subscription tells the store once

            def subscribed(wanted: int = wanted) -> bool:
                return len(changes) >= wanted

            await wait_until(subscribed, 15, f"subscribed again after outage {outage}")
        in_use = len(pool._in_use_connections)
        # The subscription's connection and at most one command in flight (the lease).
        assert in_use <= 2, f"{in_use} connections held after {OUTAGES} outages"
    finally:
        await store.close()
