"""The file store and the Redis store are one interface: the same compare-and-set, the same
answers, so the rollout engine never asks which one it has."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from splitproxy.control.stores.redis_store import RedisStore
from splitproxy.control.stores.store import FileStore, Loaded, StateStore, Wanted
from splitproxy.rollout import Phase, RouteState
from tests.support.processes import RedisServer, require_binary


@pytest.fixture(params=["file", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path,
                key_prefix: str) -> AsyncIterator[StateStore]:
    if request.param == "file":
        yield FileStore(tmp_path / "state.json")
        return
    server = RedisServer(require_binary("redis-server"), tmp_path / "redis")
    await server.start()
    redis = RedisStore(server.url, key_prefix, lease=1.0)
    try:
        yield redis
    finally:
        await redis.close()
        await server.stop()


A = RouteState("identity-a", "r1", phase=Phase.PROGRESSING, step=1, weight=20)


async def test_compare_and_set_writes_only_on_top_of_the_stored_seq(store: StateStore) -> None:
    assert await store.put("shop", A, -1) is None  # nothing stored yet
    assert await store.put("shop", replace(A, step=9), -1) == A  # someone was first
    b = replace(A, step=2, seq=1)
    assert await store.put("shop", b, 0) is None
    assert await store.put("shop", replace(A, step=7, seq=1), 0) == b  # stale: b won
    assert await store.fetch({"shop": "identity-a"}) == {"shop": b}


async def test_each_identity_is_kept_apart_and_the_latest_is_known(store: StateStore) -> None:
    assert await store.put("shop", A, -1) is None
    other = replace(A, identity="identity-b", run="r2", phase=Phase.ABORTED)
    assert await store.put("shop", other, -1) is None  # another identity: its own slot
    assert await store.fetch({"shop": "identity-b"}) == {"shop": other}
    loaded = await store.load({"shop": Wanted("identity-b"), "web": Wanted("identity-w")})
    assert loaded == {"shop": Loaded(other, None), "web": Loaded(None, None)}
    # A third identity finds nothing of its own, and what ran last as `previous`.
    assert await store.load({"shop": Wanted("identity-c")}) == {"shop": Loaded(None, other)}


async def test_a_retired_identity_is_no_longer_current(store: StateStore) -> None:
    assert await store.put("shop", A, -1) is None
    await store.retire("shop", "identity-a")
    if isinstance(store, FileStore):
        assert await store.fetch({"shop": "identity-a"}) == {}  # the file drops it
    else:
        assert isinstance(store, RedisStore)
        ttl = await store._redis.pttl(store.key("shop", "identity-a"))
        assert 0 < ttl <= 14 * 24 * 3600 * 1000  # Redis lets it expire
    assert store.is_leader() in (True, False)
    assert {"backend", "up", "error"} <= set(store.describe())
