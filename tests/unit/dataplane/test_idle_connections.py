"""What an idle keep-alive connection holds: no parser, no queue, no header of its last
request (the 10,000-idle-connection memory of the benchmark), and that it still parses the
next request whole. On fake transports and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from splitproxy.config.models import Config
from splitproxy.dataplane import server as dataplane_server
from splitproxy.dataplane.http import downstream
from splitproxy.dataplane.http.listener import PLAIN
from tests.support.fakeio import FakeServer, config

GET = b"GET /x HTTP/1.1\r\nHost: shop.example\r\nX-Request-Id: t-1\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
OK_TO_CLIENT = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: t-1\r\n\r\nok"


def parsing(conn: downstream.DownstreamProtocol) -> bool:
    """The connection holds a parser (a function: mypy would narrow the attribute)."""
    return conn.parser is not None


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer(config())
    yield srv
    srv.loop.close()


def test_a_new_connection_has_no_parser_until_its_first_byte(server: FakeServer) -> None:
    up, _ = server.idle_upstream()
    conn, client = server.connect()
    assert not parsing(conn) and conn.queue is None and conn.flow.paused_by == ()
    conn.data_received(GET)
    assert parsing(conn)
    up.data_received(OK)
    assert client.take() == OK_TO_CLIENT


def test_an_idle_connection_gives_up_its_parser_at_the_next_tick_and_parses_on(
        server: FakeServer) -> None:
    up, upstream = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    up.data_received(OK)
    assert client.take() == OK_TO_CLIENT
    assert parsing(conn)  # not dropped per answer: a busy connection keeps it
    server.tick(0.1)
    assert not parsing(conn) and conn.queue is None
    assert conn._headers == [] and conn._url == b""
    upstream.take()
    conn.data_received(GET)  # a new parser, the whole head
    assert upstream.take().startswith(b"GET /x HTTP/1.1\r\nHost: shop.example\r\n")
    up.data_received(OK)
    assert client.take() == OK_TO_CLIENT
    assert not client.is_closing()


@pytest.mark.parametrize("part", [b"G", b"GET /x HTTP/1.1\r\nHost: shop.exa"])
def test_a_connection_in_the_middle_of_a_head_keeps_its_parser(server: FakeServer,
                                                               part: bytes) -> None:
    up, _ = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    up.data_received(OK)
    client.take()
    conn.data_received(part)
    server.tick(0.1)
    assert parsing(conn)
    conn.data_received(GET[len(part):])
    up.data_received(OK)
    assert client.take() == OK_TO_CLIENT


def test_a_waiting_answer_keeps_the_parser(server: FakeServer) -> None:
    up, _ = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    server.tick(0.1)  # the answer is not there yet
    assert parsing(conn)
    up.data_received(OK)
    assert client.take() == OK_TO_CLIENT


def test_trailers_never_reach_the_shared_empty_header_list(server: FakeServer) -> None:
    up, upstream = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(b"POST /x HTTP/1.1\r\nHost: shop.example\r\nX-Request-Id: t-1\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Trailer: 1\r\n\r\n")
    up.data_received(OK)
    assert client.take() == OK_TO_CLIENT
    server.tick(0.1)
    assert not parsing(conn)
    conn.data_received(b"POST /x HTTP/1.1\r\nHost: shop.example\r\nX-Request-Id: t-1\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 2\r\n\r\n")
    up.data_received(OK)
    assert client.take() == OK_TO_CLIENT
    assert downstream._NO_HEADERS == []
    assert b"X-Trailer" not in upstream.take()


def test_pipelined_requests_get_a_queue_and_reading_resumes_after_them(
        server: FakeServer) -> None:
    up, _ = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET + b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert conn.queue is not None and len(conn.queue) == 1
    assert not client.is_reading()
    up.data_received(OK)
    answers = client.take()
    assert answers.startswith(OK_TO_CLIENT) and b"HTTP/1.1 404 " in answers
    assert client.is_reading() and conn.flow.paused_by == ()


def test_a_reload_s_idle_time_header_limit_and_response_time_apply(server: FakeServer) -> None:
    """`ServerState.configure` (the server's reconfigure): the copies read per request follow."""
    new = Config.model_validate(config(timeouts={"idle": "1s", "response_header": "2s"},
                                       limits={"max_header": 1024}))
    server.state.configure(new.timeouts, new.limits)
    up, _ = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET)
    server.tick(1.5)
    assert client.take() == b""
    server.tick(0.5)  # response_header: 2 s now, not 4 s
    assert client.take().startswith(b"HTTP/1.1 504 ")
    server.tick(1.0)  # idle: 1 s now, not 5 s
    assert client.is_closing()
    conn, client = server.connect()
    conn.data_received(b"GET /x HTTP/1.1\r\nHost: shop.example\r\nX-Big: " + b"a" * 1100 +
                       b"\r\n\r\n")
    assert client.take().startswith(b"HTTP/1.1 431 ")


def test_with_many_connections_open_the_parser_goes_right_after_the_answer(
        server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downstream, "PARK_AT", 1)  # this connection and the one below: many
    server.connect()
    up, _ = server.idle_upstream()
    conn, client = server.connect()
    conn.data_received(GET + b"GET /x HTTP/1.1\r\nHost: shop.exa")  # and the next one begun
    up.data_received(OK)
    server.loop.advance(0.0)  # the callback soon, no sweep: a head in progress keeps it
    assert parsing(conn)
    conn.data_received(b"mple\r\nX-Request-Id: t-1\r\n\r\n")
    up.data_received(OK)
    assert client.take() == OK_TO_CLIENT * 2
    server.loop.advance(0.0)
    assert not parsing(conn) and conn._headers == []
    conn.data_received(GET)
    up.data_received(OK)
    assert client.take() == OK_TO_CLIENT


def test_connections_from_one_address_share_its_bytes_up_to_a_bound(
        server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataplane_server, "PEER_ADDRESSES_KEPT", 2)
    make = dataplane_server._factory(server.state, PLAIN)  # what the acceptor calls
    first, again = make(("10.0.0.1", 4000)), make(("10.0.0.1", 4001))
    assert first.client_ip == b"10.0.0.1" and again.client_ip is first.client_ip
    assert make(("::1", 4002)).client_ip is make(("::1", 4003)).client_ip  # the second kept
    # Past the bound an address is encoded per connection, as it was for every one before.
    third, fourth = make(("10.0.0.3", 4004)), make(("10.0.0.3", 4005))
    assert third.client_ip == fourth.client_ip == b"10.0.0.3"
    assert third.client_ip is not fourth.client_ip
    assert make(("10.0.0.1", 4006)).client_ip is first.client_ip
