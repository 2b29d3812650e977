"""HTTP/2 upstream failures and the version: connect failures and refused streams count against
the endpoint (passive health) and the version's error counters; a connect failure moves on
to the version's next endpoint; a GOAWAY above the last stream id blames nobody."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from splitproxy.config.models import Health
from splitproxy.dataplane.h2 import outcome
from splitproxy.dataplane.h2.upstream_stream import EndKind, StreamError

from .h2server import H2TestServer, ServerKnobs
from .pools import Version, request


async def test_a_refused_connect_counts_and_the_next_endpoint_answers(
        refused_port: Callable[[], int],
        make_version: Callable[[list[int], Health], Version]) -> None:
    server = H2TestServer()
    async with server.serve() as port:
        dead = refused_port()
        v = make_version([port, dead], Health())  # round robin starts at the second
        stream, h2pool = await outcome.open_for_version(
            v.version, v.h2pools, v.version.stats, request("/size/2"), True)
        assert h2pool.endpoint.port == port
        await stream.response()
        outcome.answered(h2pool)
        assert await stream.body() == b"xx"
        dead_pool, live_pool = v.version.pools[1], v.version.pools[0]
        assert (dead_pool.failures, live_pool.failures) == (1, 0)
        assert v.version.stats.errors["connect"] == 1


async def test_every_endpoint_down_is_a_502_and_enough_failures_eject(
        refused_port: Callable[[], int],
        make_version: Callable[[list[int], Health], Version]) -> None:
    v = make_version([refused_port(), refused_port()],
                     Health(consecutive_failures=2, min_healthy=0))
    for _ in range(2):
        with pytest.raises(outcome.NoEndpoint) as info:
            await outcome.open_for_version(v.version, v.h2pools, v.version.stats,
                                           request("/"), True)
        assert (info.value.kind, info.value.status) == ("connect", 502)
    assert all(pool.ejected for pool in v.version.pools)
    assert v.version.stats.errors["connect"] == 4
    with pytest.raises(outcome.NoEndpoint) as info:
        await outcome.open_for_version(v.version, v.h2pools, v.version.stats, request("/"),
                                       True)
    assert info.value.status == 503 and "no healthy endpoint" in info.value.detail


async def test_a_refused_stream_counts_against_the_endpoint_and_may_be_retried(
        make_version: Callable[[list[int], Health], Version]) -> None:
    server = H2TestServer(ServerKnobs(refuse=1))
    async with server.serve() as port:
        v = make_version([port], Health())
        stream, h2pool = await outcome.open_for_version(
            v.version, v.h2pools, v.version.stats, request("/size/1"), True)
        error = await stream.closed()
        assert isinstance(error, StreamError) and error.refused
        outcome.count_stream_end(v.version, v.version.stats, h2pool, error)
        assert h2pool.health.failures == 1
        assert v.version.stats.errors["reset"] == 1
        assert outcome.may_retry(error, retries=0, body_kept=True)
        assert not outcome.may_retry(error, retries=1, body_kept=True)
        assert not outcome.may_retry(error, retries=0, body_kept=False)
        again, h2pool = await outcome.open_for_version(
            v.version, v.h2pools, v.version.stats, request("/size/1"), True)
        await again.response()
        outcome.answered(h2pool)
        assert h2pool.health.failures == 0


async def test_a_goaway_blames_nobody(
        make_version: Callable[[list[int], Health], Version]) -> None:
    v = make_version([1], Health())  # never connected: the rules alone
    h2pool = v.h2pools.get(v.version.pools[0])
    error = StreamError(EndKind.RESET, "upstream going away", retryable=True)
    outcome.count_stream_end(v.version, v.version.stats, h2pool, error)
    assert h2pool.health.failures == 0 and v.version.stats.errors["reset"] == 0
    cancelled = StreamError(EndKind.CANCELLED, "reset by the proxy")
    outcome.count_stream_end(v.version, v.version.stats, h2pool, cancelled)
    assert v.version.stats.errors == dict.fromkeys(v.version.stats.errors, 0)
    timeout = StreamError(EndKind.TIMEOUT, "upstream did not answer in time")
    outcome.count_stream_end(v.version, v.version.stats, h2pool, timeout)
    assert v.version.stats.errors["timeout"] == 1 and h2pool.health.failures == 0
