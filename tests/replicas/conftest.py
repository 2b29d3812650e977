"""Fixtures for the many-replicas tests: a real `redis-server` in the test's tmp dir (and
`prometheus`, from tests/conftest.py), and a key prefix of the test's own. The helpers are in
`tests/support/`.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.support.processes import RedisServer, require_binary


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(require_binary("redis-server"), tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of this test's own: replicas of other tests never see its keys."""
    return f"t{secrets.token_hex(4)}:"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's redis-server, to read and write the keys the replicas use."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()
