"""A gRPC load generator: grpcio's asyncio client, `--concurrency` unary calls in flight on
one channel (one HTTP/2 connection) to `/bench.Echo/Unary` for `--duration` seconds; prints
one JSON line (calls, errors, req/s, p50 and p99 in ms). Python on both sides of a call:
`bench_h2.py` reports it as ratios to nginx's `grpc_pass`, in the same run.

    python -m loadtests.grpcload PORT [--concurrency 32] [--duration 5]
    python -m loadtests.grpcload --serve PORT        # the upstream: a grpcio echo server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc

METHOD = "/bench.Echo/Unary"


async def run(port: int, concurrency: int, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    until = start + duration
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < until:
                began = time.perf_counter()
                try:
                    await call(b"ping", timeout=10)
                    latencies.append(time.perf_counter() - began)
                except grpc.RpcError:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    lat = sorted(latencies)
    n = len(lat)
    return {"requests": n, "errors": errors, "seconds": round(seconds, 3),
            "rps": round(n / seconds, 1),
            "p50_ms": round(lat[n // 2] * 1000, 3) if n else 0.0,
            "p99_ms": round(lat[min(n - 1, int(n * 0.99))] * 1000, 3) if n else 0.0}


class _Echo(grpc.GenericRpcHandler):  # type: ignore[misc]
    def service(self, details: Any) -> Any:
        if details.method == METHOD:
            return grpc.unary_unary_rpc_method_handler(
                lambda req, ctx: req, request_deserializer=None, response_serializer=None)
        return None


async def serve(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Echo(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("port", type=int)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--serve", action="store_true", help="run the echo server on PORT")
    args = p.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.port))
        return 0
    print(json.dumps(asyncio.run(run(args.port, args.concurrency, args.duration))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
