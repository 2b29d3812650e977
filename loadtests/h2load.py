"""A small HTTP/2 load generator (h2load is not installed here): the `h2` library on uvloop,
h2c by prior knowledge, `--connections` connections each keeping `--streams` GET streams in
flight for `--duration` seconds. Prints one JSON line: requests, errors, seconds, req/s, p50
and p99 latency (ms).

It is Python: one process drives about as many streams per second as one core can frame, so
it bounds what it measures. `bench_h2.py` runs it against splitproxy and nginx alike and
reports ratios; an absolute figure above the generator's own ceiling is not measured.

    python -m loadtests.h2load PORT [--connections 16] [--streams 8] [--duration 5]
    python -m loadtests.h2load PORT --idle 1000     # hold idle h2c connections until killed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import H2Connection

HOST = "127.0.0.1"


class _Conn(asyncio.Protocol):
    def __init__(self, path: bytes, streams: int, stats: dict[str, list[float] | int],
                 until: float) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.path = path
        self.streams = streams
        self.stats = stats
        self.until = until
        self.started: dict[int, float] = {}
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        for _ in range(self.streams):
            self._request()
        self._flush()

    def _request(self) -> None:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                   (b":authority", b"bench"), (b":path", self.path)],
                             end_stream=True)
        self.started[sid] = time.perf_counter()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, ev.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0,
                                                  event.stream_id or 0)
            elif isinstance(event, ev.StreamEnded | ev.StreamReset):
                began = self.started.pop(event.stream_id or 0, None)
                if began is not None:
                    now = time.perf_counter()
                    if isinstance(event, ev.StreamEnded):
                        self.stats["latency"].append(now - began)  # type: ignore[union-attr]
                    else:
                        self.stats["errors"] += 1  # type: ignore[operator]
                    if now < self.until:
                        self._request()
                    elif not self.started and not self.done.done():
                        self.done.set_result(None)
            elif isinstance(event, ev.ConnectionTerminated) and not self.done.done():
                self.done.set_result(None)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def run(port: int, connections: int, streams: int, duration: float, path: str
              ) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    stats: dict[str, list[float] | int] = {"latency": [], "errors": 0}
    start = time.perf_counter()
    until = start + duration
    conns = []
    for _ in range(connections):
        _, proto = await loop.create_connection(
            lambda: _Conn(path.encode(), streams, stats, until), HOST, port)
        conns.append(proto)
    await asyncio.wait_for(asyncio.gather(*(c.done for c in conns)), duration + 30)
    seconds = time.perf_counter() - start
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    lat = sorted(stats["latency"])  # type: ignore[arg-type]
    n = len(lat)
    return {"requests": n, "errors": stats["errors"], "seconds": round(seconds, 3),  # type: ignore[dict-item]
            "rps": round(n / seconds, 1),
            "p50_ms": round(lat[n // 2] * 1000, 3) if n else 0.0,
            "p99_ms": round(lat[min(n - 1, int(n * 0.99))] * 1000, 3) if n else 0.0}


async def hold(port: int, count: int) -> None:
    """`count` idle h2c connections (preface, SETTINGS exchanged), held until killed."""
    held = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(HOST, port)
        conn = H2Connection(H2Configuration(client_side=True))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        conn.receive_data(await reader.read(65536))
        writer.write(conn.data_to_send())
        held.append((reader, writer))
    print(json.dumps({"held": len(held)}), flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("port", type=int)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--streams", type=int, default=8, help="streams in flight per connection")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--path", default="/")
    p.add_argument("--idle", type=int, default=0, help="hold this many idle connections")
    args = p.parse_args(argv)
    import uvloop

    if args.idle:
        uvloop.run(hold(args.port, args.idle))
        return 0
    result = uvloop.run(run(args.port, args.connections, args.streams, args.duration,
                            args.path))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
