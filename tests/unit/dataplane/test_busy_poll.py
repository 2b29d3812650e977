"""Busy polling (`busypoll`, `performance.busy_poll`): a read keeps the loop polling for the
window after it, never longer, and never while two or more requests are in flight; a side
whose polls keep running out stops polling but for a probe. Driven by hand: a fake loop whose
`call_soon` runs at the next advance, and a clock of our own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from splitproxy.config.models import Config, ConfigError, load
from splitproxy.dataplane.http.batch import WriteBatch
from splitproxy.dataplane.http.busypoll import CLIENT, MISSES, PROBE, UPSTREAM, BusyPoll
from tests.support.configs import proxy_config, route
from tests.support.fakeio import FakeLoop, FakeServer

WINDOW = 50e-6


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def poller() -> tuple[BusyPoll, FakeLoop, WriteBatch, Clock]:
    loop, clock = FakeLoop(), Clock()
    writes = WriteBatch(loop)
    return BusyPoll(loop, writes, WINDOW, clock), loop, writes, clock


def scheduled(loop: FakeLoop) -> int:
    return sum(1 for handle in loop.timers if not handle.cancelled)


def test_a_read_keeps_the_loop_polling_for_the_window_then_lets_it_sleep() -> None:
    busy, loop, _, clock = poller()
    busy.kick(CLIENT)
    assert scheduled(loop) == 1
    for _ in range(4):  # each turn schedules the next while inside the window
        clock.now += WINDOW / 5
        loop.advance(0)
        assert scheduled(loop) == 1
    clock.now += WINDOW  # past it: this turn is the last
    loop.advance(0)
    assert scheduled(loop) == 0
    assert busy.turns == 5


def test_a_read_while_polling_extends_the_window_without_a_second_callback() -> None:
    busy, loop, _, clock = poller()
    busy.kick(CLIENT)
    clock.now += WINDOW * 0.9
    busy.kick(CLIENT)
    assert scheduled(loop) == 1
    clock.now += WINDOW * 0.5  # past the first window, inside the second
    loop.advance(0)
    assert scheduled(loop) == 1
    clock.now += WINDOW
    loop.advance(0)
    assert scheduled(loop) == 0


def test_no_polling_while_two_or_more_requests_are_in_flight() -> None:
    busy, loop, writes, clock = poller()
    writes.busy_change(2)  # under load: the write batch gathers, the loop never sleeps
    busy.kick(CLIENT)
    assert scheduled(loop) == 0
    writes.busy_change(-1)
    busy.kick(CLIENT)
    assert scheduled(loop) == 1
    writes.busy_change(1)  # load came while polling: the next turn stops
    loop.advance(0)
    assert scheduled(loop) == 0 and clock.now < WINDOW
    writes.busy_change(-1)
    writes.h2_busy = 1  # an HTTP/2 stream and an HTTP/1.1 exchange: two in flight
    busy.kick(CLIENT)
    assert scheduled(loop) == 0
    writes.h2_busy = 0
    busy.kick(CLIENT)
    assert scheduled(loop) == 1


def poll_of(server: FakeServer) -> BusyPoll | None:
    """Read afresh each time (mypy would keep what an earlier assert narrowed it to)."""
    return server.state.busy_poll


@pytest.fixture
def server() -> Iterator[FakeServer]:
    made = FakeServer(proxy_config([route({"stable": "http://127.0.0.1:9"})]))
    yield made
    made.loop.close()


def test_the_server_state_polls_only_when_configured_and_follows_reloads(
        server: FakeServer) -> None:
    state = server.state
    assert poll_of(server) is None  # until the server applies its config (ProxyServer)
    state.busy_polling(WINDOW)
    busy = poll_of(server)
    assert busy is not None and busy.window == WINDOW
    state.busy_polling(2 * WINDOW)  # a reload: the same poller, a new window
    assert poll_of(server) is busy and busy.window == 2 * WINDOW
    state.busy_polling(0.0)
    assert poll_of(server) is None


def test_reads_of_client_connections_kick_it(server: FakeServer) -> None:
    server.state.busy_polling(WINDOW)
    busy = server.state.busy_poll
    assert busy is not None
    conn, _ = server.connect()
    conn.data_received(b"GET / HTTP/1.1\r\n")
    assert busy.turns == 0 and any(not h.cancelled for h in server.loop.timers)


def test_busy_poll_is_auto_by_default_and_takes_microseconds_up_to_1ms(tmp_path: Path) -> None:
    base = proxy_config([route({"stable": "http://127.0.0.1:9"})])
    assert Config.model_validate(base).performance.busy_poll == "auto"
    on = Config.model_validate({**base, "performance": {"busy_poll": "50us"}})
    assert on.performance.busy_poll == pytest.approx(50e-6)
    assert Config.model_validate({**base, "performance": {"busy_poll": " AUTO"}}
                                 ).performance.busy_poll == "auto"
    assert Config.model_validate({**base, "performance": {"busy_poll": 0}}
                                 ).performance.busy_poll == 0.0
    path = tmp_path / "c.yaml"
    too_long = "at most 1ms (a wake-up costs tens of microseconds: polling longer only burns CPU)"
    for value, error in ((" 2ms", f"{too_long}, got 2ms"),
                         ("50", f"{too_long}, got 50 (a bare number is seconds)"),
                         ("-5us", "expected auto, 0s (off) or a duration up to 1ms, got '-5us'"),
                         ("sometimes", "expected auto, 0s (off) or a duration up to 1ms, got "
                                       "'sometimes'")):
        path.write_text("routes:\n  - name: r\n    versions: {v: {endpoints: ['http://127.0.0.1:9']}}\n"
                        f"    weights: {{v: 100}}\nperformance:\n  busy_poll: {value}\n")
        with pytest.raises(ConfigError) as info:
            load(path)
        assert str(info.value) == f"{path}:6: performance.busy_poll: {error}"


def run_out(busy: BusyPoll, loop: FakeLoop, clock: Clock) -> None:
    """Let the poll under way run past its window with nothing read."""
    clock.now += 2 * WINDOW
    loop.advance(0)
    assert scheduled(loop) == 0


def test_a_side_whose_polls_run_out_stops_polling_but_for_a_probe() -> None:
    busy, loop, _, clock = poller()
    for _ in range(MISSES):  # an upstream's answer, then a client that thinks
        busy.kick(CLIENT)
        clock.now += WINDOW / 4
        busy.kick(UPSTREAM)  # caught by the client side's poll
        run_out(busy, loop, clock)
    assert busy.sides_on() == (True, False)
    busy.kick(CLIENT)
    assert scheduled(loop) == 1  # the client side still polls for the answer ...
    clock.now += WINDOW / 4
    busy.kick(UPSTREAM)  # ... caught; the upstream side is off: no new poll for it, ...
    clock.now += WINDOW / 4
    loop.advance(0)
    assert scheduled(loop) == 1  # ... the client side's runs out its window
    run_out(busy, loop, clock)
    assert busy.sides_on() == (True, False)
    for _ in range(PROBE - 2):
        busy.kick(UPSTREAM)
        assert scheduled(loop) == 0
    busy.kick(UPSTREAM)  # the PROBE-th read since it turned off: a probe
    assert scheduled(loop) == 1
    clock.now += WINDOW / 2
    busy.kick(CLIENT)  # caught: the upstream side polls again
    assert busy.sides_on() == (True, True)


def test_a_poll_left_to_run_out_by_a_side_that_is_off_is_not_counted_a_miss() -> None:
    busy, loop, _, clock = poller()
    for _ in range(MISSES):
        busy.kick(UPSTREAM)
        run_out(busy, loop, clock)
    for _ in range(MISSES + 1):
        busy.kick(CLIENT)
        busy.kick(UPSTREAM)  # off: the client side's poll runs on, unjudged
        run_out(busy, loop, clock)
    assert busy.sides_on() == (True, False)


def test_reads_of_the_side_a_poll_waits_after_are_not_catches() -> None:
    busy, loop, _, clock = poller()
    for _ in range(MISSES):  # a client that thinks, answers that come in two reads
        busy.kick(CLIENT)
        clock.now += WINDOW / 4
        busy.kick(UPSTREAM)  # the answer's head: caught by the client side's poll
        clock.now += WINDOW / 4
        busy.kick(UPSTREAM)  # its body: the same side, which says nothing of the client
        run_out(busy, loop, clock)
    assert busy.sides_on() == (True, False)
