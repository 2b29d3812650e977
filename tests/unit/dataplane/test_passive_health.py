"""health.py: ejection, its back-off and its end, on a fake clock."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from splitproxy.dataplane.http import health
from splitproxy.dataplane.http.pool import Pool
from splitproxy.dataplane.http.runtime import VersionRuntime
from splitproxy.dataplane.plane import EndpointHealth
from tests.support.fakeio import FakeServer, config


@pytest.fixture
def server() -> Iterator[FakeServer]:
    cfg = config(health={"consecutive_failures": 3, "base_ejection": "10s",
                         "max_ejection": "40s", "min_healthy": 1})
    cfg["routes"][0]["versions"]["stable"]["endpoints"].append("http://127.0.0.1:9002")
    srv = FakeServer(cfg)
    yield srv
    srv.loop.close()


def stable(server: FakeServer) -> VersionRuntime:
    return server.state.runtime.routes[0].versions["stable"]


def in_rotation(pool: Pool) -> bool:
    return not pool.ejected


def fail(version: VersionRuntime, index: int, times: int) -> None:
    for _ in range(times):
        health.record_failure(version, version.pools[index])


def test_consecutive_failures_eject_and_the_endpoint_returns_after_the_period(
        server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    version = stable(server)
    pool = version.pools[0]
    server.idle_upstream()  # an idle connection to endpoint 0
    fail(version, 0, 2)
    assert (pool.ejected, pool.failures) == (False, 2)
    with caplog.at_level(logging.INFO, "splitproxy.health"):
        fail(version, 0, 1)
        assert (pool.ejected, pool.failures) == (True, 0)
        assert pool.idle == []  # its idle connections close at once
        assert [version.next_pool() for _ in range(3)] == [version.pools[1]] * 3
        server.loop.advance(9.5)
        assert not in_rotation(pool)
        server.loop.advance(0.5)
    assert in_rotation(pool)
    assert [r.getMessage() for r in caplog.records] == [
        "ejected endpoint 127.0.0.1:9001 of shop/stable for 10s after 3 consecutive failures",
        "endpoint 127.0.0.1:9001 returns to rotation",
    ]


def test_an_answer_ends_a_run_of_failures(server: FakeServer) -> None:
    version = stable(server)
    fail(version, 0, 2)
    version.pools[0].answered()
    fail(version, 0, 2)
    assert not version.pools[0].ejected


def test_each_repeat_ejection_lasts_twice_as_long_up_to_the_cap(server: FakeServer) -> None:
    version = stable(server)
    pool = version.pools[0]
    periods = []
    for _ in range(4):
        start = server.loop.time()
        fail(version, 0, 3)
        while pool.ejected:
            server.loop.advance(1.0)
        periods.append(server.loop.time() - start)
    assert periods == [10.0, 20.0, 40.0, 40.0]


def test_an_endpoint_that_behaved_for_twice_the_cap_starts_from_the_base_again(
        server: FakeServer) -> None:
    version = stable(server)
    pool = version.pools[0]
    fail(version, 0, 3)
    server.loop.advance(10.0)
    server.loop.advance(80.5)  # more than 2 x max_ejection since the last ejection
    fail(version, 0, 3)
    assert pool.ejections == 1
    server.loop.advance(9.5)
    assert not in_rotation(pool)
    server.loop.advance(0.5)
    assert in_rotation(pool)


def test_no_ejection_leaves_fewer_than_min_healthy_endpoints(server: FakeServer) -> None:
    version = stable(server)
    fail(version, 0, 3)
    fail(version, 1, 10)
    assert version.pools[0].ejected and not version.pools[1].ejected
    assert version.next_pool() is version.pools[1]


def test_a_retired_endpoint_leaves_no_return_timer(server: FakeServer) -> None:
    version = stable(server)
    fail(version, 0, 3)
    pending = [t for t in server.loop.timers if not t.cancelled]
    assert len(pending) == 1
    server.pools.retain({version.pools[1].endpoint})
    assert version.pools[0].retired and pending[0].cancelled


def test_report(server: FakeServer) -> None:
    version = stable(server)
    fail(version, 0, 3)
    fail(version, 1, 1)
    assert health.report(server.state.runtime.routes) == [
        EndpointHealth("shop", "stable", "127.0.0.1:9001", up=False, failures=0, ejections=1,
                       passive_up=False),
        EndpointHealth("shop", "stable", "127.0.0.1:9002", up=True, failures=1, ejections=0),
    ]
