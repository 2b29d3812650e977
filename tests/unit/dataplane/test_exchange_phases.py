"""lifecycle.Phase: the exchange's state machine, walked on fake transports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from splitproxy.dataplane.http.downstream import DownstreamProtocol
from splitproxy.dataplane.http.exchange import Exchange
from splitproxy.dataplane.http.lifecycle import (
    BUFFERING,
    CONNECTING,
    DONE,
    QUEUED,
    RESPONDING,
    SENT,
    STREAMING,
    Phase,
)
from tests.support.fakeio import FakeServer, config

GET = b"GET /x HTTP/1.1\r\nHost: shop.example\r\nX-Request-Id: t-1\r\n\r\n"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer(config())
    yield srv
    srv.loop.close()


def phase_of(ex: Exchange) -> Phase:
    # Read through a call: the phase constants are Final, and mypy would keep the phase
    # narrowed to the last one asserted across the calls that move it.
    return ex.phase


def current(conn: DownstreamProtocol) -> Exchange:
    assert conn.current is not None
    return conn.current


def test_a_proxied_request_walks_every_phase_forward(server: FakeServer) -> None:
    server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    ex = current(conn)
    assert phase_of(ex) is SENT
    ex.response_head(200, b"OK", [(b"Content-Length", b"4")], True)
    assert phase_of(ex) is RESPONDING  # nothing written yet
    ex.flush()
    assert phase_of(ex) is STREAMING
    ex.response_body(b"done")
    ex.response_complete()
    assert phase_of(ex) is DONE
    assert client.take() == (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Request-Id: t-1\r\n"
                             b"\r\ndone")


def test_without_an_idle_connection_the_exchange_connects(server: FakeServer) -> None:
    conn, _ = server.connect()
    tasks = len(server.loop.tasks)
    conn.data_received(GET)
    assert current(conn).phase is CONNECTING
    assert len(server.loop.tasks) == tasks + 1  # the connect, left to the loop


def test_a_small_body_is_read_whole_before_connecting(server: FakeServer) -> None:
    _, upstream = server.idle_upstream()
    conn, _ = server.connect()
    conn.data_received(b"POST / HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 4\r\n\r\nab")
    assert current(conn).phase is BUFFERING
    assert upstream.take() == b""
    conn.data_received(b"cd")
    assert current(conn).phase is SENT
    assert upstream.take().endswith(b"\r\n\r\nabcd")


def test_a_pipelined_request_is_queued_behind_the_current_one(server: FakeServer) -> None:
    server.idle_upstream()
    conn, _ = server.connect()
    conn.data_received(GET + GET)
    assert [ex.phase for ex in conn.queue or ()] == [QUEUED]


def test_an_upstream_failing_before_a_byte_was_written_steps_back_to_a_clean_error(
        server: FakeServer) -> None:
    server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    ex = current(conn)
    ex.response_head(200, b"OK", [(b"Content-Length", b"4")], True)
    ex.upstream_failed("protocol", "bad response from upstream")
    assert phase_of(ex) is DONE
    answer = client.take()
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"200 OK" not in answer  # the upstream's head never went out
