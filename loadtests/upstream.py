"""Fault-injectable upstreams for the load-test scenarios: several aiohttp apps in one process.

    python -m loadtests.upstream stable-1=stable:9001 stable-2=stable:9003 canary-1=canary:9002

Each instance (`NAME=VERSION:PORT`, on 127.0.0.1) answers every method and path with
``<version> <instance>`` and the headers ``X-Served-By: <version>`` and
``X-Upstream-Instance: <instance>`` -- also on the failures it is told to inject, so a client can
count errors per version. At run time, on the instance's own port:

    POST /_control {"error_rate": 1.0, "delay_ms": 800}    # any subset of the fault fields
    POST /_control {"slow_rate": 0.05, "slow_ms": 300}     # 5% of answers 300 ms later
    POST /_control {"schedule": [{"after": 15, "error_rate": 1.0}]}   # seconds from now
    POST /_control {"shutdown": true}     # stop listening, finish in-flight, close keep-alives
    GET  /_control                        # current faults and counters, as JSON

The process prints one JSON line (``{"ready": {...}}``) once every instance listens, stops on
SIGTERM/SIGINT, and also stops by itself when its parent process goes away, so a killed scenario
runner does not leave it behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"
CONTROL_PATH = "/_control"
SHUTDOWN_GRACE = 2.0  # seconds in-flight requests get when an instance is shut down
_FAULT_FIELDS = ("error_rate", "error_status", "delay_ms", "slow_rate", "slow_ms")


@dataclass(frozen=True, slots=True)
class Faults:
    """What an instance does wrong right now."""

    error_rate: float = 0.0  # share of requests answered with `error_status`
    error_status: int = 500
    delay_ms: float = 0.0  # added before every answer, failures included
    slow_rate: float = 0.0  # share of answers that also wait `slow_ms` (a latency tail)
    slow_ms: float = 0.0

    def update(self, changes: dict[str, Any]) -> Faults:
        unknown = set(changes) - set(_FAULT_FIELDS)
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        new = replace(self, **{k: type(getattr(self, k))(v) for k, v in changes.items()})
        ok = 0.0 <= new.error_rate <= 1.0 and new.delay_ms >= 0 and 100 <= new.error_status < 600 \
            and 0.0 <= new.slow_rate <= 1.0 and new.slow_ms >= 0
        if not ok:
            raise ValueError(f"invalid faults {asdict(new)}")
        return new


@dataclass(slots=True)
class Instance:
    """One listening upstream: its identity, its faults and what it has answered."""

    name: str
    version: str
    port: int
    faults: Faults = field(default_factory=Faults)
    requests: int = 0
    errors: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    slow_rng: random.Random = field(default_factory=lambda: random.Random(1))
    runner: web.AppRunner | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "port": self.port,
            "faults": asdict(self.faults),
            "requests": self.requests,
            "errors": self.errors,
            "listening": self.runner is not None,
        }


def parse_instance(spec: str) -> tuple[str, str, int]:
    """``stable-1=stable:9001`` -> (name, version, port)."""
    name, sep, rest = spec.partition("=")
    version, sep2, port = rest.rpartition(":")
    if not (sep and sep2 and name and version and port.isdigit()):
        raise argparse.ArgumentTypeError(f"expected NAME=VERSION:PORT, got {spec!r}")
    return name, version, int(port)


def make_app(instance: Instance) -> web.Application:
    headers = {"X-Served-By": instance.version, "X-Upstream-Instance": instance.name}
    body = f"{instance.version} {instance.name}\n"

    async def handle(request: web.Request) -> web.Response:
        await request.read()  # keep the keep-alive connection clean
        instance.requests += 1
        faults = instance.faults
        delay = faults.delay_ms
        if faults.slow_rate > 0 and instance.slow_rng.random() < faults.slow_rate:
            delay += faults.slow_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        if faults.error_rate > 0 and instance.rng.random() < faults.error_rate:
            instance.errors += 1
            return web.Response(status=faults.error_status, text=f"injected error: {body}",
                                headers=headers)
        return web.Response(text=body, headers=headers)

    async def control(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response(instance.status())
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            apply_control(instance, changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(instance.status())

    app = web.Application()
    app.router.add_route("GET", CONTROL_PATH, control)
    app.router.add_route("POST", CONTROL_PATH, control)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def apply_control(instance: Instance, changes: dict[str, Any]) -> None:
    """Apply a control request now; scheduled changes and shutdowns run as tasks."""
    changes = dict(changes)
    schedule = changes.pop("schedule", [])
    shutdown = bool(changes.pop("shutdown", False))
    if not isinstance(schedule, list):
        raise ValueError("schedule must be a list of {after: seconds, ...faults}")
    instance.faults = instance.faults.update(changes)
    loop = asyncio.get_running_loop()
    for item in schedule:
        item = dict(item)
        after = float(item.pop("after"))
        instance.faults.update(item)  # validate now, not when it fires
        _spawn(instance, _later(instance, after, item))
    if shutdown:
        # After this response is written: the handler must not wait for its own shutdown.
        loop.call_soon(_spawn, instance, stop_instance(instance))


async def _later(instance: Instance, after: float, changes: dict[str, Any]) -> None:
    await asyncio.sleep(after)
    instance.faults = instance.faults.update(changes)


def _spawn(instance: Instance, coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    instance.tasks.add(task)
    task.add_done_callback(instance.tasks.discard)


async def start_instance(instance: Instance) -> None:
    runner = web.AppRunner(make_app(instance), access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, instance.port, backlog=1024).start()
    except BaseException:
        await runner.cleanup()
        raise
    instance.runner = runner


async def stop_instance(instance: Instance) -> None:
    runner, instance.runner = instance.runner, None
    if runner is not None:
        await runner.cleanup()


async def _parent_gone(parent: int) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(1.0)


async def serve(specs: list[tuple[str, str, int]]) -> None:
    instances = [Instance(name, version, port, rng=random.Random(name),
                          slow_rng=random.Random(f"{name}/slow"))
                 for name, version, port in specs]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog = loop.create_task(_parent_gone(os.getppid()))
    watchdog.add_done_callback(lambda _: stop.set())
    try:
        for instance in instances:
            await start_instance(instance)
        ready = {i.name: {"version": i.version, "port": i.port} for i in instances}
        sys.stdout.write(json.dumps({"ready": ready}) + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        watchdog.cancel()
        for instance in instances:
            for task in list(instance.tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await stop_instance(instance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("instances", nargs="+", type=parse_instance, metavar="NAME=VERSION:PORT")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.instances))
    return 0


if __name__ == "__main__":
    sys.exit(main())
