"""Upstreams for the proxy to talk to: a well-behaved aiohttp one and a raw asyncio one."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from .rawhttp import WAIT, iter_chunked

BLOCK = bytes(range(256)) * 256  # 64 KiB of known bytes for large bodies


# --------------------------------------------------------------------------- aiohttp upstream


@dataclass
class Upstream:
    """A running aiohttp upstream and what it has seen."""

    name: str
    port: int = 0
    peers: set[tuple[str, int]] = field(default_factory=set)  # one per TCP connection
    requests: int = 0
    in_flight: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _upstream_app(up: Upstream) -> web.Application:
    """Handlers, by path:

    /headers      JSON: method, path, raw header pairs as received (order and repeats kept)
    /echo         the request body streamed back (chunked if the request was)
    /sha256       JSON {sha256, size} of the request body; ?stall=S waits before reading
    /download     ?size=N bytes of BLOCK repeated, streamed; &chunked=1 without Content-Length
    /chunked      ?n=N small parts "part<i>\n" sent as separate chunks, ?delay=S apart
    /status/{c}   an empty response with status c (204, 304, ...)
    /cookies      three Set-Cookie headers a=1, b=2, c=3 in that order
    /slow         ?delay=S seconds, then the default answer
    /ws           WebSocket echo (text and binary)
    anything else the upstream's name as body, with X-Served-By
    """

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.transport is not None:
            up.peers.add(request.transport.get_extra_info("peername"))
        up.requests += 1
        up.in_flight += 1
        try:
            resp = await handler(request)
        finally:
            up.in_flight -= 1
        resp.headers["X-Served-By"] = up.name
        return resp

    async def default(request: web.Request) -> web.Response:
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


@contextlib.asynccontextmanager
async def run_upstream(name: str) -> AsyncIterator[Upstream]:
    """An aiohttp upstream answering as `name` on a free port."""
    up = Upstream(name)
    runner = web.AppRunner(_upstream_app(up), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up.port = int(runner.addresses[0][1])
    try:
        yield up
    finally:
        await asyncio.wait_for(runner.cleanup(), WAIT)


# --------------------------------------------------------------------------- raw upstream

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawUpstream:
    """A running `asyncio.start_server` upstream; counts the connections it accepted."""

    port: int = 0
    connections: int = 0
    errors: list[BaseException] = field(default_factory=list)  # raised by a handler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def run_raw_upstream(handler: RawHandler) -> AsyncIterator[RawUpstream]:
    """Runs `handler(reader, writer)` per connection; the writer is closed after it returns.

    A peer that goes away (ConnectionError, IncompleteReadError) ends a handler quietly; any
    other exception (e.g. `read_request` rejecting what the proxy sent) fails the test on exit.
    """
    up = RawUpstream()
    tasks: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up.connections += 1
        writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:
            up.errors.append(exc)
        finally:
            writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    up.port = int(server.sockets[0].getsockname()[1])
    try:
        yield up
    finally:
        server.close()
        for w in list(writers):
            w.close()
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=WAIT)
        await asyncio.wait_for(server.wait_closed(), WAIT)
    assert not up.errors, f"raw upstream handler failed: {up.errors!r}"


@dataclass
class RawRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


async def read_request(reader: asyncio.StreamReader) -> RawRequest | None:
    """Strictly parses one request (CRLF, Content-Length or chunked); None on a clean EOF.

    Raises ValueError on anything that is not a well-formed request, so a raw upstream can tell
    a dirty reused connection (left-over body bytes read as a request line) from a clean one.
    """
    line = await reader.readline()
    if not line:
        return None
    if not line.endswith(b"\r\n"):
        raise ValueError(f"request line without CRLF: {line!r}")
    parts = line[:-2].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"bad request line: {line!r}")
    method, target, _ = parts
    headers = await _read_headers(reader)
    lower = [(k.lower(), v) for k, v in headers]
    te = [v for k, v in lower if k == "transfer-encoding"]
    cl = [v for k, v in lower if k == "content-length"]
    if te and cl:
        raise ValueError("request with both Transfer-Encoding and Content-Length")
    if te:
        if te != ["chunked"]:
            raise ValueError(f"unexpected transfer-encoding {te!r}")
        body = await _read_chunked(reader)
    elif cl:
        if len(cl) != 1 or not cl[0].isdigit():
            raise ValueError(f"bad content-length {cl!r}")
        body = await reader.readexactly(int(cl[0]))
    else:
        body = b""
    return RawRequest(method, target, headers, body)


async def _read_headers(reader: asyncio.StreamReader) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    while True:
        line = await reader.readline()
        if not line.endswith(b"\r\n"):
            raise ValueError(f"header line without CRLF: {line!r}")
        if line == b"\r\n":
            return headers
        name, sep, value = line[:-2].decode("latin-1").partition(":")
        if not sep or not name or name != name.strip() or line[:1] in b" \t":
            raise ValueError(f"bad header line: {line!r}")
        headers.append((name, value.strip()))


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    return b"".join([c async for c in iter_chunked(reader)])


def respond_with(data: bytes, *, hold: bool = False) -> RawHandler:
    """A raw handler: read one request, write `data` as is, then close (or, with `hold`, keep
    the connection open until the proxy closes it)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(data)
        await writer.drain()
        if hold:
            await reader.read()

    return handler
