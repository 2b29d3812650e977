"""Overload: does splitproxy shed load, or grow memory and latency without bound?

    python -m loadtests.overload [--short] [--json FILE]

Starts splitproxy (a subprocess, `limits.max_connections` lowered to CAP) in front of an
upstream that takes DELAY per answer, then runs steps of more and more client connections
(each a closed loop: request, read, again; a 503 makes it wait its Retry-After, 1 s, then
reconnect, as a well-behaved client does). Per step it
prints the answers served and shed (503 with Retry-After), the p50/p99 latency of the served
ones and the proxy's RSS. What shedding looks like: past the cap, served answers and their
latency stay flat, shed answers grow, and RSS stays flat instead of growing with the load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests.harness import Children, Proxy, free_port, http_json
from loadtests.idle_clients import raise_nofile, rss_tree

CAP = 200  # limits.max_connections
DELAY = 0.05  # upstream answer time
REQUEST = b"GET / HTTP/1.1\r\nHost: overload\r\n\r\n"


async def _client(port: int, until: float, out: dict[str, list[float]]) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            out["error"].append(0.0)
            await asyncio.sleep(0.05)
            continue
        try:
            while loop.time() < until:
                start = loop.time()
                writer.write(REQUEST)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                took = loop.time() - start
                if head.startswith(b"HTTP/1.1 503") and b"retry-after" in head.lower():
                    out["shed"].append(took)
                    await asyncio.sleep(1.0)  # Retry-After: 1, then a new connection
                    break
                out["served" if head.startswith(b"HTTP/1.1 200") else "error"].append(took)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, IndexError):
            out["error"].append(0.0)
        finally:
            writer.close()
        await asyncio.sleep(0.05)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


async def _step(port: int, pid: int, clients: int, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    out: dict[str, list[float]] = {"served": [], "shed": [], "error": []}
    until = loop.time() + seconds
    tasks = [asyncio.create_task(_client(port, until, out)) for _ in range(clients)]
    peak = 0
    while loop.time() < until:
        await asyncio.sleep(0.2)
        peak = max(peak, rss_tree(pid)[0])
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "clients": clients,
        "served_per_s": round(len(out["served"]) / seconds),
        "shed_per_s": round(len(out["shed"]) / seconds),
        "errors": len(out["error"]),
        "served_p50_ms": _pct(out["served"], 0.5),
        "served_p99_ms": _pct(out["served"], 0.99),
        "shed_p99_ms": _pct(out["shed"], 0.99),
        "proxy_rss_mb": round(peak / 1024, 1),
    }


def _start_upstream(children: Children) -> int:
    """`loadtests.upstream` in its own process (the clients must not slow it down), answering
    after DELAY."""
    port = free_port()
    children.start("upstream", [sys.executable, "-m", "loadtests.upstream", f"up=v:{port}"])
    deadline = time.monotonic() + 30
    while True:
        try:
            http_json(f"http://127.0.0.1:{port}/_control", {"delay_ms": DELAY * 1000})
            return port
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def run(short: bool) -> dict[str, Any]:
    raise_nofile(20000)
    steps = [CAP // 2, CAP * 2, CAP * 4] if short else [CAP // 2, CAP, CAP * 2, CAP * 4, CAP * 8]
    seconds = 3.0 if short else 8.0
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        children = Children(Path(tmp))
        up_port = await loop.run_in_executor(None, _start_upstream, children)
        proxy = Proxy(children, Path(tmp), {
            "routes": [{"name": "shop", "versions": {"v": {"endpoints": [
                f"http://127.0.0.1:{up_port}"]}}, "weights": {"v": 1}}],
            "limits": {"max_connections": CAP},
        })
        try:
            await loop.run_in_executor(None, proxy.start)
            pid = children.procs["splitproxy"].pid
            results = []
            for clients in steps:
                results.append(await _step(proxy.port, pid, clients, seconds))
                print(json.dumps(results[-1]), flush=True)
                await asyncio.sleep(0.5)
        finally:
            children.stop_all()
    return {"cap": CAP, "upstream_delay_ms": DELAY * 1000, "seconds_per_step": seconds,
            "steps": results, "time": time.time()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="3 steps of 3 s (for CI)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.short))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
