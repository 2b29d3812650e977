"""Shared helpers for the data-plane tests; every test module imports them from here.

* `run_upstream(name)` — an aiohttp upstream with a handful of handlers (`upstreams.py`).
* `run_raw_upstream(handler)` — an `asyncio.start_server` upstream for misbehaving peers.
* `run_proxy(config)` — a `ProxyServer` on a free port, stopped on exit; `proxied()` for the
  common one-upstream case.
* `raw_client(port)` — a socket that sends exact bytes and parses responses strictly
  (`rawhttp.py`).

Everything binds 127.0.0.1 and every wait is bounded, so a hung proxy fails a test instead of
hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

import pytest

from splitproxy.config.models import Config
from splitproxy.dataplane.server import ProxyServer

from .rawhttp import (
    WAIT,
    RawClient,
    Response,
    assert_error,
    build_request,
    parse_response_bytes,
    raw_client,
)
from .upstreams import (
    BLOCK,
    RawHandler,
    RawRequest,
    RawUpstream,
    Upstream,
    read_request,
    respond_with,
    run_raw_upstream,
    run_upstream,
)

__all__ = [
    "BLOCK",
    "WAIT",
    "RawClient",
    "RawHandler",
    "RawRequest",
    "RawUpstream",
    "Response",
    "Upstream",
    "assert_error",
    "build_request",
    "free_port",
    "get",
    "parse_response_bytes",
    "peak_rss",
    "proxied",
    "proxy_config",
    "raw_client",
    "read_request",
    "refused_port",
    "respond_with",
    "route",
    "rss_bytes",
    "run_proxy",
    "run_raw_upstream",
    "run_upstream",
    "version_errors",
    "wait_for_condition",
]


def free_port() -> int:
    """A port that was free a moment ago (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def refused_port() -> Iterator[Callable[[], int]]:
    """Makes ports where connecting is refused, for the whole test.

    Each is a socket bound and never listening, held until the test ends: Linux answers a
    connection to it with a reset, and no other socket can take the port meanwhile (the
    holder has no SO_REUSEADDR, and a bound port is never chosen as an ephemeral one). A
    port that was merely free a moment ago can be taken by another process's listener, or
    by an outgoing connection that then connects to itself (TCP simultaneous open).
    """
    held: list[socket.socket] = []

    def make() -> int:
        sock = socket.socket()
        held.append(sock)
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

    yield make
    for sock in held:
        sock.close()


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@contextlib.asynccontextmanager
async def peak_rss() -> AsyncIterator[list[int]]:
    """Samples RSS every 10 ms while the block runs; yields [baseline, peak], peak set on exit."""
    result = [rss_bytes(), 0]
    peak = result[0]
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_bytes())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)

    task = asyncio.create_task(sample())
    try:
        yield result
    finally:
        stop.set()
        await task
        result[1] = max(peak, rss_bytes())


async def wait_for_condition(
    predicate: Callable[[], bool], timeout: float = WAIT, what: str = "condition"
) -> None:
    """Polls `predicate` every 10 ms until it is true; fails the test after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- config helpers


def route(
    versions: Mapping[str, str | list[str]],
    weights: Mapping[str, int] | None = None,
    *,
    name: str = "shop",
    match: Mapping[str, str] | None = None,
    sticky: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One route dict; `versions` maps version -> endpoint URL(s). Default weights: all equal."""
    r: dict[str, Any] = {
        "name": name,
        "versions": {
            v: {"endpoints": [eps] if isinstance(eps, str) else list(eps)}
            for v, eps in versions.items()
        },
        "weights": dict(weights) if weights is not None else dict.fromkeys(versions, 1),
    }
    if match is not None:
        r["match"] = dict(match)
    if sticky is not None:
        r["sticky"] = dict(sticky)
    return r


def proxy_config(routes: Iterable[Mapping[str, Any]], **sections: Any) -> dict[str, Any]:
    """A full config dict on free ports with test-friendly timeouts; `sections` merge on top."""
    cfg: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "routes": [dict(r) for r in routes],
        "timeouts": {
            "connect": "2s",
            "response_header": "10s",
            "client_header": "10s",
            "idle": "60s",
            "drain": "5s",
        },
        "limits": {"max_header": 65536},
    }
    for key, value in sections.items():
        if isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg


# --------------------------------------------------------------------------- the proxy


@contextlib.asynccontextmanager
async def run_proxy(config: Mapping[str, Any] | Config) -> AsyncIterator[ProxyServer]:
    """A started in-process `ProxyServer`; stopped (drain 1 s) when the block exits."""
    cfg = config if isinstance(config, Config) else Config.model_validate(dict(config))
    srv = ProxyServer(cfg)
    await asyncio.wait_for(srv.start(), WAIT)
    try:
        yield srv
    finally:
        await asyncio.wait_for(srv.stop(drain=1.0), WAIT + 5)


@contextlib.asynccontextmanager
async def proxied(
    name: str = "stable", **sections: Any
) -> AsyncIterator[tuple[Upstream, ProxyServer]]:
    """The common case: one aiohttp upstream as the only version of route "shop"."""
    async with run_upstream(name) as up:
        async with run_proxy(proxy_config([route({name: up.url})], **sections)) as srv:
            yield up, srv


async def get(port: int, target: str = "/", **kw: Any) -> Response:
    """One request on a fresh connection."""
    method = kw.pop("method", "GET")
    async with raw_client(port) as c:
        return await c.request(method, target, **kw)


def version_errors(srv: ProxyServer, version: str = "stable", name: str = "shop") -> dict[str, int]:
    """The non-zero upstream error counters of one version."""
    return {k: v for k, v in srv.stats.get(name, version).errors.items() if v}
