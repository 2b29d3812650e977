"""The test upstream: one aiohttp server that answers with its name, counts what it sees, and
fails, slows down or goes away when a test tells it to.

Every answer carries `X-Served-By: <name>`. Faults are switched at run time by setting fields:
`fail_all` (every request a 500), `fail_synthetic` (only the synthetic requests the rollout
guard sends), `fail_behind` (only requests that came through the given proxy ports, told by the
Host header the proxy forwards), `delay` (latency of the default answer); `await up.stop()`
shuts it down gracefully before the block ends, as a terminating pod does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from .ports import free_port
from .waiting import WAIT

BLOCK = bytes(range(256)) * 256  # 64 KiB of known bytes for large bodies
SYNTHETIC = "X-Splitproxy-Synthetic"  # the header on the rollout guard's own requests


@dataclass
class Upstream:
    """A running upstream: its faults (set them at run time) and what it has seen."""

    name: str
    port: int = 0
    # faults
    fail_all: bool = False
    fail_synthetic: bool = False
    fail_behind: set[int] = field(default_factory=set)  # proxy ports
    delay: float = 0.0  # seconds before the default answer
    # what it has seen
    peers: set[tuple[str, int]] = field(default_factory=set)  # one per TCP connection
    requests: int = 0
    in_flight: int = 0
    errors: int = 0  # failures it was told to answer
    by_proxy: Counter[int] = field(default_factory=Counter)  # requests per proxy port
    runner: web.AppRunner | None = field(default=None, repr=False)
    scheme: str = "http"  # https: served with the ssl context run_upstream was given

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def failing(self, request: web.Request, via: int) -> bool:
        return (self.fail_all or via in self.fail_behind
                or (self.fail_synthetic and SYNTHETIC in request.headers))

    async def stop(self) -> None:
        """Graceful shutdown (aiohttp's runner.cleanup()); again, or at the block's end, a
        no-op."""
        runner, self.runner = self.runner, None
        if runner is not None:
            await asyncio.wait_for(runner.cleanup(), WAIT)


def _proxy_port(request: web.Request) -> int:
    # The proxy forwards the client's Host (127.0.0.1:<proxy port>) unchanged.
    host = request.headers.get("X-Forwarded-Host") or request.host
    _, _, port = host.rpartition(":")
    return int(port) if port.isdigit() else 0


def _upstream_app(up: Upstream) -> web.Application:
    """Handlers, by path:

    /headers      JSON: method, path, raw header pairs as received (order and repeats kept)
    /echo         the request body streamed back (chunked if the request was)
    /sha256       JSON {sha256, size} of the request body; ?stall=S waits before reading
    /download     ?size=N bytes of BLOCK repeated, streamed; &chunked=1 without Content-Length
    /chunked      ?n=N small parts "part<i>\\n" sent as separate chunks, ?delay=S apart
    /status/{c}   an empty response with status c (204, 304, ...)
    /cookies      three Set-Cookie headers a=1, b=2, c=3 in that order
    /slow         ?delay=S seconds, then the default answer
    /ws           WebSocket echo (text and binary)
    anything else the upstream's name as body (after `delay`), with X-Path

    A request the faults make fail is answered 500 with the name, whatever its path.
    """

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.transport is not None:
            up.peers.add(request.transport.get_extra_info("peername"))
        via = _proxy_port(request)
        up.by_proxy[via] += 1
        up.requests += 1
        up.in_flight += 1
        try:
            if up.failing(request, via):
                up.errors += 1
                resp: web.StreamResponse = web.Response(status=500, text=up.name)
            else:
                resp = await handler(request)
        finally:
            up.in_flight -= 1
        resp.headers["X-Served-By"] = up.name
        return resp

    async def default(request: web.Request) -> web.Response:
        if up.delay:
            await asyncio.sleep(up.delay)
        return web.Response(text=up.name, headers={"X-Path": request.raw_path})

    async def headers(request: web.Request) -> web.Response:
        pairs = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers]
        body = {"method": request.method, "path": request.raw_path, "headers": pairs}
        return web.json_response(body)

    async def echo(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        if request.content_length is not None:
            resp.content_length = request.content_length
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        async for chunk in request.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def sha256(request: web.Request) -> web.Response:
        stall = float(request.query.get("stall", "0"))
        if stall:
            await asyncio.sleep(stall)
        h = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            size += len(chunk)
        return web.json_response({"sha256": h.hexdigest(), "size": size})

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        resp = web.StreamResponse()
        if request.query.get("chunked"):
            resp.enable_chunked_encoding()
        else:
            resp.content_length = size
        await resp.prepare(request)
        sent = 0 if request.method != "HEAD" else size  # aiohttp would send a body for HEAD
        while sent < size:
            part = BLOCK[: size - sent]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        delay = float(request.query.get("delay", "0.01"))
        for i in range(int(request.query.get("n", "5"))):
            if i:
                await asyncio.sleep(delay)
            await resp.write(f"part{i}\n".encode())
        await resp.write_eof()
        return resp

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def cookies(request: web.Request) -> web.Response:
        hdrs: CIMultiDict[str] = CIMultiDict()
        for c in ("a=1", "b=2", "c=3"):
            hdrs.add("Set-Cookie", c)
        return web.Response(text="cookies", headers=hdrs)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", "1")))
        return web.Response(text=up.name)

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application(middlewares=[record], client_max_size=1 << 30)
    app.router.add_route("*", "/headers", headers)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/sha256", sha256)
    app.router.add_get("/download", download)
    app.router.add_get("/chunked", chunked)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", default)
    return app


async def start_app(app: web.Application,
                    ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    """An aiohttp application listening on a free 127.0.0.1 port: its runner and the port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, int(runner.addresses[0][1])


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[int]:
    """`start_app` for the length of the block; yields the port."""
    runner, port = await start_app(app)
    try:
        yield port
    finally:
        await asyncio.wait_for(runner.cleanup(), WAIT)


@contextlib.asynccontextmanager
async def run_upstream(name: str, *, delay: float = 0.0,
                       ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Upstream]:
    """An upstream answering as `name` on a free port (over TLS with `ssl_context`); stopped
    at the end unless it was."""
    up = Upstream(name, delay=delay, scheme="https" if ssl_context is not None else "http")
    up.runner, up.port = await start_app(_upstream_app(up), ssl_context)
    try:
        yield up
    finally:
        await up.stop()


@contextlib.asynccontextmanager
async def run_upstreams(*names: str, delay: float = 0.0) -> AsyncIterator[dict[str, Upstream]]:
    """Several upstreams at once, by name."""
    async with contextlib.AsyncExitStack() as stack:
        yield {n: await stack.enter_async_context(run_upstream(n, delay=delay)) for n in names}


@contextlib.asynccontextmanager
async def run_upstream_process(*names: str, delay: float = 0.0) -> AsyncIterator[dict[str, str]]:
    """Upstreams answering their name (`loadtests.upstream`) in a process of their own, each
    `delay` seconds late; yields name -> URL. For timing tests: an upstream in the test's own
    event loop answers late whenever that loop is busy, which a real upstream does not."""
    ports = {name: free_port() for name in names}
    specs = [f"{name}-1={name}:{port}" for name, port in ports.items()]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.upstream", *specs, stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
        assert b'"ready"' in line, line
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        async with aiohttp.ClientSession() as session:
            for url in urls.values():
                async with session.post(f"{url}/_control",
                                        json={"delay_ms": delay * 1000}) as resp:
                    assert resp.status == 200, await resp.text()
        yield urls
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
