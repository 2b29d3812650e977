"""Real servers on loopback for the data-plane tests.

* `run_upstream(name)` — an aiohttp upstream with a handful of handlers (see `_upstream_app`).
* `run_raw_upstream(handler)` — an `asyncio.start_server` upstream for misbehaving peers.
* `run_proxy(config)` — a `ProxyServer` on a free port, stopped on exit.
* `raw_client(port)` — a socket that sends exact bytes and parses responses strictly.

Everything binds 127.0.0.1 and every wait is bounded, so a hung proxy fails a test instead of
hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from splitproxy.config import Config
from splitproxy.server import ProxyServer

WAIT = 5.0  # default bound for a single network step in these tests
BLOCK = bytes(range(256)) * 256  # 64 KiB of known bytes for large bodies


def free_port() -> int:
    """A port that was free a moment ago (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A port with nothing listening: connecting to it is refused."""
    return free_port()


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


@contextlib.asynccontextmanager
async def proxied(
    name: str = "stable", **sections: Any
) -> AsyncIterator[tuple[Upstream, ProxyServer]]:
    """The common case: one aiohttp upstream as the only version of route "shop"."""
    async with run_upstream(name) as up:
        async with run_proxy(proxy_config([route({name: up.url})], **sections)) as srv:
            yield up, srv


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


async def _iter_chunked(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Decoded chunks until the terminating chunk; IncompleteReadError if the stream ends."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line[:-2].split(b";")[0], 16)
        if size == 0:
            # trailers (none expected) up to the empty line
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return
        yield await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    return b"".join([c async for c in _iter_chunked(reader)])


def build_request(
    method: str = "GET",
    target: str = "/",
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    host: str | None = "shop.example.com",
    content_length: bool | None = None,
) -> bytes:
    """Exact HTTP/1.1 request bytes. Content-Length is added when there is a body, unless
    `content_length=False` (or a framing header is given explicitly)."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    names = {k.lower() for k, _ in pairs}
    out = [f"{method} {target} HTTP/1.1"]
    if host is not None and "host" not in names:
        out.append(f"Host: {host}")
    out += [f"{k}: {v}" for k, v in pairs]
    framed = "content-length" in names or "transfer-encoding" in names
    if content_length is None:
        content_length = bool(body) and not framed
    if content_length:
        out.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------- raw client


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response_bytes(data: bytes) -> Response:
    """Head and whatever body bytes follow, from a complete capture (read until close)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no complete response head in {data[:200]!r} ({len(data)} bytes)")
    lines = head.decode("latin-1").split("\r\n")
    version, status, *reason = lines[0].split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0"), lines[0][:200]
    headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    return Response(int(status), reason[0] if reason else "", headers, body)


class RawClient:
    """One client TCP connection that writes exact bytes and reads responses strictly."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), WAIT)

    async def request(self, *args: Any, **kw: Any) -> Response:
        """`build_request(*args, **kw)`, sent, then one response read."""
        await self.send(build_request(*args, **kw))
        return await self.read_response(method=args[0] if args else kw.get("method", "GET"))

    async def read_head(self, timeout: float = WAIT) -> Response:
        """Status line and headers (the body is left unread)."""
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        return parse_response_bytes(raw)

    async def iter_body(
        self, head: Response, method: str = "GET", timeout: float = WAIT
    ) -> AsyncIterator[bytes]:
        """The body of `head` as it arrives, framed by the response's own headers."""
        if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
            return
        te = head.header("transfer-encoding")
        cl = head.header("content-length")
        if te is not None:
            assert te.lower() == "chunked", f"unexpected Transfer-Encoding {te!r}"
            chunks = _iter_chunked(self.reader)
            while True:
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), timeout)
                except StopAsyncIteration:
                    return
                yield chunk
        elif cl is not None:
            left = int(cl)
            while left:
                chunk = await asyncio.wait_for(self.reader.read(min(left, 1 << 18)), timeout)
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(chunk)
                yield chunk
        else:
            while chunk := await asyncio.wait_for(self.reader.read(1 << 18), timeout):
                yield chunk

    async def read_response(self, method: str = "GET", timeout: float = WAIT) -> Response:
        """One final response (interim 1xx responses other than 101 are skipped)."""
        while True:
            head = await self.read_head(timeout)
            if head.status == 101 or not 100 <= head.status < 200:
                break
        head.body = b"".join([c async for c in self.iter_body(head, method, timeout)])
        return head

    async def read_until_close(self, timeout: float = WAIT) -> bytes:
        """Everything the peer sends until it closes (a reset counts as a close)."""
        out = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := await asyncio.wait_for(self.reader.read(1 << 16), timeout):
                out += chunk
        return bytes(out)

    async def is_closed(self, timeout: float = WAIT) -> bool:
        """True when the peer closes within `timeout` without sending anything more."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        assert not data, f"expected the connection to close, got {data!r}"
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1)


@contextlib.asynccontextmanager
async def raw_client(port: int) -> AsyncIterator[RawClient]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, limit=1 << 20), WAIT
    )
    client = RawClient(reader, writer)
    try:
        yield client
    finally:
        await client.close()


async def get(port: int, target: str = "/", **kw: Any) -> Response:
    """One request on a fresh connection."""
    method = kw.pop("method", "GET")
    async with raw_client(port) as c:
        return await c.request(method, target, **kw)


def assert_error(resp: Response, status: int) -> None:
    """A proxy-made error: the status, and a short text/plain body that says why."""
    assert resp.status == status, (resp.status, resp.text)
    ctype = resp.header("content-type") or ""
    assert ctype.startswith("text/plain"), ctype
    assert 0 < len(resp.body) < 1024, resp.body


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


def version_errors(srv: ProxyServer, version: str = "stable", name: str = "shop") -> dict[str, int]:
    """The non-zero upstream error counters of one version."""
    return {k: v for k, v in srv.stats.get(name, version).errors.items() if v}
