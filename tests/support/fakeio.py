"""A fake transport and a fake event loop (as uvicorn's tests/protocols): the data plane's
protocols run on them without sockets, and time moves only when a test moves it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from splitproxy.config.models import Config
from splitproxy.dataplane.http.downstream import DownstreamProtocol, sweep
from splitproxy.dataplane.http.pool import Pools
from splitproxy.dataplane.http.runtime import compile_table
from splitproxy.dataplane.http.state import ServerState
from splitproxy.dataplane.http.upstream import UpstreamConnection
from splitproxy.dataplane.stats import Stats
from splitproxy.routing import table

T = TypeVar("T")


class FakeTransport:
    """Records what the protocol writes and how it steers reading and closing (queried with
    methods, as asyncio's transports are)."""

    def __init__(self, peer: tuple[str, int] = ("192.0.2.7", 40000)) -> None:
        self.written = bytearray()
        self.buffered = 0  # what get_write_buffer_size reports: the peer's unread bytes
        self.extra: dict[str, Any] = {"peername": peer, "socket": None}
        self._reading = True
        self._closing = False
        self._aborted = False
        self._eof = False

    def take(self) -> bytes:
        """What was written since the last take."""
        data = bytes(self.written)
        self.written.clear()
        return data

    def is_reading(self) -> bool:
        return self._reading

    def is_closing(self) -> bool:
        return self._closing

    def was_aborted(self) -> bool:
        return self._aborted

    def sent_eof(self) -> bool:
        """write_eof was called: our side of the connection is done (a lingering close)."""
        return self._eof

    # -- the transport API the protocols use -------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self._closing:  # as uvloop: bytes written after close() go nowhere
            self.written += data

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.write(part)

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = self._aborted = True

    def write_eof(self) -> None:
        self._eof = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)


class _Handle:
    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]):
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Task:
    """A task never run: what `create_task` returns (the coroutine is kept, not awaited)."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro

    def cancel(self) -> None:
        self.coro.close()


class FakeLoop:
    """The loop's clock, timers and tasks, by hand: `advance` moves the clock and runs the
    timers that fell due; tasks are recorded, never run."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.timers: list[_Handle] = []
        self.tasks: list[_Task] = []

    def time(self) -> float:
        return self.now

    def create_task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = _Task(coro)
        self.tasks.append(task)
        return cast("asyncio.Task[T]", task)

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> _Handle:
        handle = _Handle(self.now + delay, callback, args)
        self.timers.append(handle)
        return handle

    def call_soon(self, callback: Callable[..., object], *args: Any) -> _Handle:
        """Run at the next `advance`, however small."""
        return self.call_later(0.0, callback, *args)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [h for h in self.timers if h.when <= self.now and not h.cancelled]
        self.timers = [h for h in self.timers if h not in due]
        for handle in due:
            handle.callback(*handle.args)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()


class FakeServer:
    """A `ServerState` on a fake loop, its pools, and client connections on fake transports."""

    def __init__(self, config: dict[str, Any], runs: dict[str, str] | None = None) -> None:
        self.config = Config.model_validate(config)
        self.loop = FakeLoop()
        loop = cast(asyncio.AbstractEventLoop, self.loop)
        self.pools = Pools(loop, self.config.timeouts.connect, 30.0)
        self.stats = Stats()
        runtime = compile_table(table.build(self.config, runs=runs), self.pools, self.stats,
                                self.config.health)
        self.state = ServerState(self.loop, runtime, self.config.timeouts, self.config.limits,
                                 self.stats, DownstreamProtocol, self.loop.time)
        # Every write straight to its fake transport, where a test reads it at once (the write
        # batch has its own tests).
        self.state.writes.gather_from = sys.maxsize

    def connect(self) -> tuple[DownstreamProtocol, FakeTransport]:
        conn = DownstreamProtocol(self.state)
        transport = FakeTransport()
        conn.connection_made(cast(asyncio.Transport, transport))
        return conn, transport

    def idle_upstream(self, version: str = "stable") -> tuple[UpstreamConnection, FakeTransport]:
        """An idle keep-alive connection to the version's (first) endpoint of the first route:
        the next request to it takes this one instead of connecting."""
        pool = self.state.runtime.routes[0].versions[version].pools[0]
        up = UpstreamConnection(pool)
        transport = FakeTransport(peer=("127.0.0.1", pool.endpoint.port))
        up.connection_made(cast(asyncio.Transport, transport))
        pool.release(up)
        return up, transport

    def tick(self, seconds: float) -> None:
        """Move the clock and run one sweep, as the server's sweeper task does."""
        self.loop.advance(seconds)
        sweep(self.state.connections, self.loop.time())


def config(**sections: Any) -> dict[str, Any]:
    """One route `shop` on host shop.example: stable at 127.0.0.1:9001 (never dialled)."""
    cfg: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "routes": [{
            "name": "shop",
            "match": {"host": "shop.example"},
            "versions": {"stable": {"endpoints": ["http://127.0.0.1:9001"]}},
            "weights": {"stable": 1},
        }],
        "timeouts": {"client_header": "2s", "idle": "5s", "client_body": "3s",
                     "response_header": "4s", "upstream_read": "6s", "client_send": "7s"},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg
