"""The write batch (`batch.WriteBatch`): small writes wait for the end of the loop turn and
leave in the order they were made, one write per transport; large ones, vectors, closes and
ends of output never overtake what waits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import cast

import pytest

from splitproxy.dataplane.http.batch import SMALL, WriteBatch
from splitproxy.dataplane.http.downstream import DownstreamProtocol
from tests.support.fakeio import FakeLoop, FakeServer, FakeTransport, config


class CountingTransport(FakeTransport):
    """Also counts the calls that reached it (one system call each, on a real transport)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def write(self, data: bytes) -> None:
        self.calls += 1
        super().write(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.calls += 1
        for part in parts:
            super().write(part)


class FinishedTransport(CountingTransport):
    """A transport whose output already ended: writing to it raises, as uvloop's does."""

    def write(self, data: bytes) -> None:
        raise RuntimeError("Cannot call write() after write_eof()")


class ClosingTransport(CountingTransport):
    """Closing (uvloop closes a transport whose peer's FIN the protocol did not keep open)
    but not yet lost: as uvloop's, it still takes writes until its connection_lost."""

    def is_closing(self) -> bool:
        return True


def batch(busy: int = 2) -> tuple[WriteBatch, FakeLoop]:
    loop = FakeLoop()
    writes = WriteBatch(loop)
    writes.busy_change(busy)
    return writes, loop


def tcp(transport: FakeTransport) -> asyncio.Transport:
    return cast(asyncio.Transport, transport)


def gathering(writes: WriteBatch) -> bool:
    return writes.gathering  # asked anew each time (mypy would narrow an attribute)


def turn_ends(loop: FakeLoop) -> None:
    loop.advance(0.0)


def test_with_one_connection_busy_writes_go_straight_out() -> None:
    writes, loop = batch(busy=1)
    t = CountingTransport()
    writes.write(tcp(t), b"answer")
    assert t.take() == b"answer"
    assert loop.timers == []  # no callback per turn when nothing can be gathered


def test_small_writes_wait_for_the_end_of_the_turn_and_leave_once_per_transport() -> None:
    writes, loop = batch()
    a, b = CountingTransport(), CountingTransport()
    writes.write(tcp(a), b"one ")
    writes.write(tcp(b), b"uno ")
    writes.write(tcp(a), b"two")
    writes.write(tcp(b), b"dos")
    assert (bytes(a.written), bytes(b.written)) == (b"", b"")
    assert len(loop.timers) == 1  # one callback for the turn, not one per write
    turn_ends(loop)
    assert (a.take(), b.take()) == (b"one two", b"uno dos")
    assert (a.calls, b.calls) == (1, 1)


def test_what_waits_stays_first_even_when_the_server_is_no_longer_busy() -> None:
    writes, loop = batch()
    t = CountingTransport()
    writes.write(tcp(t), b"first ")
    writes.busy_change(-2)
    assert gathering(writes)  # the writers still come here while anything waits
    writes.write(tcp(t), b"second")
    assert bytes(t.written) == b""
    turn_ends(loop)
    assert t.take() == b"first second"
    assert not gathering(writes)  # nothing waits, one connection busy: straight out again
    writes.write(tcp(t), b"third")
    assert t.take() == b"third"


def test_a_large_write_goes_out_at_once_after_what_waits() -> None:
    writes, loop = batch()
    t = CountingTransport()
    writes.write(tcp(t), b"head ")
    body = b"x" * SMALL
    writes.write(tcp(t), body)
    assert t.take() == b"head " + body  # nothing left to the end of the turn: flow control
    turn_ends(loop)
    assert t.take() == b""


def test_small_writes_that_add_up_past_the_limit_go_out_at_once() -> None:
    writes, loop = batch()
    t = CountingTransport()
    part = b"y" * (SMALL // 2)
    writes.write(tcp(t), part)
    writes.write(tcp(t), part)
    assert t.take() == part * 2
    turn_ends(loop)
    assert t.take() == b""


def test_a_transport_already_closing_is_written_at_once() -> None:
    """Closed after its peer's FIN earlier in the turn: its connection_lost, scheduled then,
    may run before the flush; unbatched, the write would have gone out before it."""
    writes, loop = batch()
    closing = ClosingTransport()
    writes.write(tcp(closing), b"answer")
    assert closing.take() == b"answer"
    assert loop.timers == []


def test_a_large_first_write_is_not_held() -> None:
    writes, loop = batch()
    t = CountingTransport()
    writes.write(tcp(t), b"z" * SMALL)
    assert len(t.take()) == SMALL
    assert loop.timers == []


def test_a_vector_goes_out_at_once_after_what_waits() -> None:
    writes, loop = batch()
    t = CountingTransport()
    writes.write(tcp(t), b"head ")
    writes.writelines(tcp(t), [b"body ", b"tail"])
    assert t.take() == b"head body tail"
    turn_ends(loop)
    assert t.take() == b""


def test_release_writes_what_waits_before_a_close() -> None:
    writes, loop = batch()
    a, b = CountingTransport(), CountingTransport()
    writes.write(tcp(a), b"last answer")
    writes.write(tcp(b), b"other")
    writes.release(tcp(a))
    a.close()
    assert a.take() == b"last answer"
    assert b.written == b""  # the others still wait for the turn's end
    writes.release(tcp(a))  # nothing waits any more: nothing happens
    turn_ends(loop)
    assert (a.take(), b.take()) == (b"", b"other")


def test_a_transport_lost_meanwhile_drops_what_waits() -> None:
    writes, loop = batch()
    a, b = CountingTransport(), CountingTransport()
    writes.write(tcp(a), b"never")
    writes.write(tcp(b), b"kept")
    a.abort()
    turn_ends(loop)
    assert (bytes(a.written), a.calls) == (b"", 0)
    assert b.take() == b"kept"


def test_one_transport_that_cannot_write_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writes, loop = batch()
    bad, good = FinishedTransport(), CountingTransport()
    writes.write(tcp(bad), b"late")
    writes.write(tcp(good), b"on time")
    turn_ends(loop)
    assert good.take() == b"on time"
    assert bad.was_aborted()
    assert "cannot take it" in caplog.text


def test_a_new_turn_schedules_a_new_callback() -> None:
    writes, loop = batch()
    t = CountingTransport()
    writes.write(tcp(t), b"a")
    turn_ends(loop)
    writes.write(tcp(t), b"b")
    assert len(loop.timers) == 1
    turn_ends(loop)
    assert (t.take(), t.calls) == (b"ab", 2)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """A fake server whose batch gathers every write; its recorded tasks closed afterwards."""
    made = FakeServer(config())
    made.state.writes.gather_from = 0
    made.state.writes.busy_change(0)  # applies it
    yield made
    made.loop.close()


def test_a_client_connection_aborted_by_the_proxy_sends_what_waits_first(
    server: FakeServer,
) -> None:
    conn, transport = server.connect()
    conn.write(b"the answer so far")
    assert bytes(transport.written) == b""
    conn.abort()
    assert transport.take() == b"the answer so far"
    assert transport.was_aborted()


def test_an_upstream_connection_closed_by_the_proxy_sends_what_waits_first(
    server: FakeServer,
) -> None:
    up, transport = server.idle_upstream()
    up.writes = server.state.writes  # as `start` sets it for an exchange
    up.write(b"a tunnel's last bytes")
    assert bytes(transport.written) == b""
    up.close()
    assert transport.take() == b"a tunnel's last bytes"
    assert transport.was_aborted()


def test_an_answer_of_the_turn_goes_out_before_the_client_ends_its_input(
    server: FakeServer,
) -> None:
    """The client's end of input, read in the turn its answer was written (no exchange left in
    flight): the transport closes itself once eof_received returns, so what waits is written
    first (uvloop drops what is written to a closing transport)."""
    conn, transport = server.connect()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: nobody.example\r\n\r\n")  # own 404
    assert bytes(transport.written) == b""
    assert not conn.eof_received()
    transport.close()  # what the transport does when eof_received says not to keep it
    turn_ends(server.loop)
    assert transport.take().startswith(b"HTTP/1.1 404 ")


class EndingTransport(FakeTransport):
    """As uvloop's: a write after write_eof raises."""

    def write(self, data: bytes) -> None:
        if self.sent_eof():
            raise RuntimeError("Cannot call write() after write_eof()")
        super().write(data)


def test_a_request_queued_behind_a_closing_answer_is_not_started_once_it_lingers(
    server: FakeServer,
) -> None:
    """A closing answer fills the client's buffer (our writing paused), a request pipelined
    behind it (here the 400 httptools gives data after `Connection: close`): the lingering
    close ends our output. When the client drains, the queued request is not started: it
    wrote after write_eof (older than the batch: the RuntimeError left resume_writing; with
    the batch it leaves `_linger`'s release, or the flush aborts the connection and cuts the
    first answer's tail still in the buffer)."""
    up, _ = server.idle_upstream()
    up.writes = server.state.writes
    conn = DownstreamProtocol(server.state)
    client = EndingTransport()
    conn.connection_made(tcp(client))
    conn.data_received(b"GET /x HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n"
                       b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")  # own 404
    turn_ends(server.loop)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    client.buffered = 300_000
    conn.pause_writing()  # the answer's last write crossed the high-water mark
    turn_ends(server.loop)
    assert client.sent_eof()  # lingering: the answer, then FIN
    assert client.take().startswith(b"HTTP/1.1 200 ")
    client.buffered = 50_000
    conn.resume_writing()  # the client drained to the low-water mark
    turn_ends(server.loop)
    assert not client.was_aborted()
    assert client.take() == b""
    assert server.state.writes.busy == 0


def test_an_upgrade_answered_while_the_server_drains_is_closed_after_its_101_not_cut(
    server: FakeServer,
) -> None:
    """The server starts draining while an upgrade waits for its 101: the client gets the 101
    and what followed it, then a close, as the tunnels open when the drain began. It lingered
    instead (our output ended by write_eof) and then became a tunnel anyway, whose bytes were
    written after write_eof: the batch's flush cut the connection (and unbatched, the write
    raised)."""
    up, upstream = server.idle_upstream()
    up.writes = server.state.writes
    conn = DownstreamProtocol(server.state)
    client = EndingTransport()
    conn.connection_made(tcp(client))
    conn.data_received(b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: upgrade\r\n"
                       b"Upgrade: websocket\r\n\r\n")
    turn_ends(server.loop)
    server.state.draining = True
    conn.drain()  # what the server's stop does: busy, so it goes on
    up.data_received(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\nfrom-up")
    turn_ends(server.loop)
    assert not client.sent_eof() and not client.was_aborted()
    assert client.is_closing()
    answer = client.take()
    assert answer.startswith(b"HTTP/1.1 101 ") and answer.endswith(b"\r\n\r\nfrom-up")
    assert server.state.writes.busy == 0
    conn.connection_lost(None)
    assert upstream.is_closing()  # the tunnel's upstream side goes with it
