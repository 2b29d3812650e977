"""The client-side protocol on a fake transport and a fake clock: bytes in, bytes out, and
every timeout of the sweeper checked by moving the clock, never by waiting."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from splitproxy.dataplane.http.connection import LINGER_TIME
from splitproxy.dataplane.http.lifecycle import STREAMING
from tests.support.fakeio import FakeServer, config

GET = b"GET /x HTTP/1.1\r\nHost: shop.example\r\nX-Request-Id: t-1\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
OK_TO_CLIENT = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: t-1\r\n\r\nok"


def statuses(data: bytes) -> list[int]:
    """The status of each complete response in `data` (all framed by Content-Length here)."""
    found = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response: {data!r}"
        length = re.search(rb"\r\nContent-Length: (\d+)", head, re.I)
        size = int(length.group(1)) if length else 0
        assert len(rest) >= size, f"incomplete body: {data!r}"
        found.append(int(head[9:12]))
        data = rest[size:]
    return found


@pytest.fixture
def make_server() -> Iterator[Callable[..., FakeServer]]:
    """FakeServer(config(**sections)); their recorded tasks are closed afterwards."""
    made: list[FakeServer] = []

    def make(**sections: Any) -> FakeServer:
        made.append(FakeServer(config(**sections)))
        return made[-1]

    yield make
    for srv in made:
        srv.loop.close()


@pytest.fixture
def server(make_server: Callable[..., FakeServer]) -> FakeServer:
    return make_server()


# -- answers the proxy makes itself -----------------------------------------------------------
@pytest.mark.parametrize(
    ("request_bytes", "status", "closes"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n", 404, False, id="no-route"),
        pytest.param(b"GET / HTTP/1.0\r\n\r\n", 404, True, id="no-route-http10"),
        pytest.param(b"TRACE / HTTP/1.1\r\nHost: shop.example\r\n\r\n", 405, True, id="trace"),
        pytest.param(b"GET / HTTP/1.1\r\nHost shop.example\r\n\r\n", 400, True, id="malformed"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, True, id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, True, id="two-hosts"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: gzip, "
                     b"chunked\r\n\r\n", 400, True, id="coding-other-than-chunked"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: shop.example\r\nExpect: 200-ok\r\n"
                     b"Content-Length: 3\r\n\r\n", 417, True, id="bad-expect"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: upgrade\r\n"
                     b"Upgrade: websocket\r\nContent-Length: 2\r\n\r\nhi", 400, True,
                     id="upgrade-with-body"),
        pytest.param(b"GET /%2e%2e/etc HTTP/1.1\r\nHost: shop.example\r\n\r\n", 400, True,
                     id="path-above-root"),
    ],
)
def test_the_proxy_answers_by_itself(server: FakeServer, request_bytes: bytes, status: int,
                                     closes: bool) -> None:
    conn, client = server.connect()
    conn.data_received(request_bytes)
    assert statuses(client.take()) == [status]
    assert client.sent_eof() is closes  # a closing answer ends with a FIN (lingering close)
    assert not client.was_aborted()


def test_a_head_over_max_header_is_a_431(make_server: Callable[..., FakeServer]) -> None:
    server = make_server(limits={"max_header": 1024})
    conn, client = server.connect()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: shop.example\r\nX-Big: " + b"a" * 2000)
    assert statuses(client.take()) == [431]
    assert client.sent_eof()


def test_a_declared_body_over_max_body_is_a_413_counted_for_the_version(
        make_server: Callable[..., FakeServer]) -> None:
    server = make_server(limits={"max_body": 10})
    conn, client = server.connect()
    conn.data_received(b"POST / HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 11\r\n\r\n")
    assert statuses(client.take()) == [413]
    assert server.stats.get("shop", "stable").responses == {413: 1}


def test_too_many_connections_get_a_503_at_once(make_server: Callable[..., FakeServer]) -> None:
    server = make_server(limits={"max_connections": 1})
    server.connect()
    _, second = server.connect()
    answer = second.take()
    assert statuses(answer) == [503]
    assert b"Retry-After: 1\r\n" in answer
    assert second.sent_eof()
    assert server.stats.local["overload"] == 1


# -- proxied answers --------------------------------------------------------------------------
def test_a_proxied_answer_reaches_the_client_and_the_connection_returns_to_the_pool(
        server: FakeServer) -> None:
    up, upstream = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    assert upstream.take() == (
        b"GET /x HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 192.0.2.7\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: shop.example\r\n"
        b"X-Request-Id: t-1\r\n\r\n")  # the client's id, sent on (and returned below)
    up.data_received(OK)
    assert client.take() == OK_TO_CLIENT
    assert up.pool.idle == [up]
    assert server.stats.get("shop", "stable").responses == {200: 1}


def test_pipelined_requests_wait_and_are_answered_in_order(server: FakeServer) -> None:
    up, _ = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET + b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert client.take() == b""  # the 404 waits for the answer before it
    assert not client.is_reading()  # and nothing more is read meanwhile
    up.data_received(OK)
    assert statuses(client.take()) == [200, 404]
    assert client.is_reading()


def test_a_slow_client_pauses_the_upstream_until_it_reads_again(server: FakeServer) -> None:
    up, upstream = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    client.buffered = 300_000
    conn.pause_writing()  # what the transport does above its high-water mark
    assert not upstream.is_reading() and not client.is_reading()
    client.buffered = 0
    conn.resume_writing()
    assert upstream.is_reading() and client.is_reading()


def test_an_upgrade_switches_the_connection_to_a_tunnel(server: FakeServer) -> None:
    up, upstream = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: upgrade\r\n"
                       b"Upgrade: websocket\r\nX-Request-Id: ws-1\r\n\r\nearly")
    assert b"Connection: upgrade\r\nUpgrade: websocket\r\n" in upstream.take()
    assert not client.is_reading()  # undecided: "early" is held, nothing more is read
    up.data_received(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\nfrom-up")
    assert client.take() == (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                             b"Upgrade: websocket\r\nX-Request-Id: ws-1\r\n\r\nfrom-up")
    assert upstream.take() == b"early" and client.is_reading()
    conn.data_received(b"to-up")
    up.data_received(b"more")
    assert (upstream.take(), client.take()) == (b"to-up", b"more")


def test_a_refused_upgrade_parses_what_follows_as_requests(server: FakeServer) -> None:
    up, upstream = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: upgrade\r\n"
                       b"Upgrade: websocket\r\n\r\nGET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
    up.data_received(OK)
    assert statuses(client.take()) == [200, 404]
    assert upstream.was_aborted()  # told `Connection: upgrade`: never reused


def test_after_a_101_without_upgrade_the_client_can_go_on(server: FakeServer) -> None:
    up, _ = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: upgrade\r\n"
                       b"Upgrade: websocket\r\n\r\n")
    up.data_received(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n")
    assert statuses(client.take()) == [502]
    assert client.is_reading() and not client.is_closing()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert statuses(client.take()) == [404]


def test_a_request_refused_in_what_was_held_behind_a_failed_upgrade_is_answered(
        server: FakeServer) -> None:
    """The held bytes are parsed while the upstream's failure is being handled (a 101 that
    names no protocol): a request refused among them still gets its answer (here 505), not
    a parser stuck in its error state. httptools hides the callback's exception there."""
    up, _ = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: upgrade\r\n"
                       b"Upgrade: websocket\r\n\r\nGET / HTTP/2.0\r\nHost: shop.example\r\n\r\n")
    up.data_received(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n")
    assert statuses(client.take()) == [502, 505]
    assert client.sent_eof() and not client.was_aborted()


def test_after_a_101_without_upgrade_what_was_held_is_parsed_as_requests(
        server: FakeServer) -> None:
    """As after any refused upgrade: the bytes sent behind the request are requests, never
    tunnel data; the upstream that switched without saying to what is closed; then the
    connection is idle like any other."""
    up, upstream = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: upgrade\r\n"
                       b"Upgrade: websocket\r\n\r\nGET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert client.take() == b"" and not client.is_reading()  # undecided: held
    up.data_received(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n")
    assert statuses(client.take()) == [502, 404]
    assert upstream.is_closing() and up.pool.idle == []
    assert server.stats.get("shop", "stable").errors["protocol"] == 1
    server.tick(4.5)
    assert client.is_reading() and not client.is_closing()
    server.tick(0.5)  # idle: 5 s
    assert client.is_closing() and client.take() == b""


# -- the sweeper: timeouts by the clock ------------------------------------------------------
def test_a_head_not_complete_in_client_header_time_gets_a_408(server: FakeServer) -> None:
    conn, client = server.connect()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: shop.example\r\n")
    server.tick(1.5)
    assert client.take() == b"" and not client.is_closing()
    server.tick(0.5)  # client_header: 2 s
    assert statuses(client.take()) == [408]
    assert client.is_closing()


def test_an_idle_connection_closes_quietly_after_idle_time(server: FakeServer) -> None:
    up, _ = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    up.data_received(OK)
    assert client.take() == OK_TO_CLIENT
    server.tick(4.5)
    assert not client.is_closing()
    server.tick(0.5)  # idle: 5 s
    assert client.is_closing() and client.take() == b""


def test_an_idle_connection_after_a_local_answer_closes_after_idle_time(
        server: FakeServer) -> None:
    conn, client = server.connect()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert statuses(client.take()) == [404]
    server.tick(4.5)
    assert not client.is_closing()  # kept alive ...
    server.tick(0.5)  # ... for idle: 5 s, as after a proxied answer (nginx: keepalive_timeout)
    assert client.is_closing() and client.take() == b""


def test_pipelined_local_answers_then_idle_time(server: FakeServer) -> None:
    conn, client = server.connect()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n" * 2)
    assert statuses(client.take()) == [404, 404]
    server.tick(4.5)
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: other.example\r\n\r\n")  # in time
    assert statuses(client.take()) == [404]
    server.tick(4.5)
    assert not client.is_closing()  # the idle time starts over after each answer
    server.tick(0.5)
    assert client.is_closing()


def test_a_new_request_on_an_idle_connection_gets_the_header_time(server: FakeServer) -> None:
    up, _ = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    up.data_received(OK)
    client.take()
    server.tick(4.0)
    conn.data_received(b"GET / HTTP/1.1\r\n")  # 1 s of idle time left, 2 s of header time
    server.tick(1.5)
    assert not client.is_closing()
    server.tick(0.5)
    assert statuses(client.take()) == [408]


def test_the_body_timeout_runs_from_the_last_read_of_the_body(server: FakeServer) -> None:
    conn, client = server.connect()
    conn.data_received(b"POST / HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 10\r\n\r\n12345")
    server.tick(1.0)  # the first look starts the body clock: client_body 3 s
    server.tick(2.0)
    conn.data_received(b"6")  # progress: the clock starts again at the next look
    server.tick(2.0)
    server.tick(2.5)
    assert client.take() == b""
    server.tick(0.5)
    assert statuses(client.take()) == [408]
    assert client.sent_eof()
    assert server.stats.get("shop", "stable").responses == {408: 1}


def test_no_answer_in_response_header_time_is_a_504_of_the_version(server: FakeServer) -> None:
    _, upstream = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    server.tick(3.5)
    assert client.take() == b""
    server.tick(0.5)  # response_header: 4 s
    assert statuses(client.take()) == [504]
    assert upstream.was_aborted()  # never pooled: the answer may still come
    assert not client.is_closing()  # the client's connection goes on
    assert server.stats.get("shop", "stable").errors["timeout"] == 1


def test_an_answer_that_stops_is_cut_after_upstream_read_time(server: FakeServer) -> None:
    up, upstream = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    assert conn.current is not None and conn.current.phase is STREAMING
    server.tick(1.0)  # the first look starts the read clock: upstream_read 6 s
    server.tick(5.5)
    assert not client.was_aborted()
    server.tick(0.5)
    assert client.was_aborted()  # the answer had begun: the client must see the cut
    assert server.stats.get("shop", "stable").errors["timeout"] == 1


def test_a_client_that_stops_reading_is_cut_after_client_send_time(server: FakeServer) -> None:
    up, upstream = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n0123456789")
    client.buffered = 300_000
    conn.pause_writing()
    server.tick(1.0)  # the first look starts the send clock: client_send 7 s
    client.buffered = 200_000
    server.tick(3.0)  # the buffer shrank: progress, the clock starts again
    server.tick(6.5)  # held for the client: the upstream's read clock does not run
    assert not client.was_aborted() and not upstream.was_aborted()
    server.tick(0.5)
    assert client.was_aborted()
    conn.connection_lost(None)
    assert upstream.was_aborted()  # paused with unread bytes on it: closed, not pooled
    assert server.stats.get("shop", "stable").client_aborts == 1


def test_a_lingering_close_reads_and_drops_then_ends_after_linger_time(
        server: FakeServer) -> None:
    conn, client = server.connect()
    conn.data_received(b"TRACE / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    assert statuses(client.take()) == [405]
    assert client.sent_eof()  # FIN sent ...
    assert client.is_reading()  # ... and what the client still sends is read, dropped
    server.tick(LINGER_TIME - 0.5)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    assert client.take() == b"" and not client.was_aborted()
    server.tick(0.5)
    assert client.was_aborted()


def test_the_lingering_time_starts_once_the_answer_is_out(server: FakeServer) -> None:
    conn, client = server.connect()
    client.buffered = 100  # the client has not read the answer yet
    conn.data_received(b"TRACE / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    server.tick(LINGER_TIME + 1.0)
    assert not client.was_aborted()
    client.buffered = 0
    server.tick(1.0)  # the answer is out: linger from now
    server.tick(LINGER_TIME - 0.5)
    assert not client.was_aborted()
    server.tick(0.5)
    assert client.was_aborted()
