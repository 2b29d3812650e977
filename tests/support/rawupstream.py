"""Raw upstreams for misbehaving peers: an `asyncio.start_server` that runs a handler per
connection, a strict request parser, and the handlers the hostile-input tests share (a
recording one, one that replays exact bytes)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from .rawhttp import iter_chunked
from .waiting import WAIT

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
async def run_raw_upstream(handler: RawHandler,
                           rcvbuf: int | None = None) -> AsyncIterator[RawUpstream]:
    """Runs `handler(reader, writer)` per connection; the writer is closed after it returns.
    `rcvbuf`: the accepted sockets' SO_RCVBUF (set on the listening socket, which they
    inherit), so that a handler that does not read stops its peer after a few kilobytes.

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

    if rcvbuf is None:
        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(on_connect, sock=sock)
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


@dataclass
class Recorder:
    """What a keep-alive raw upstream received: every request, per connection."""

    requests: list[RawRequest] = field(default_factory=list)
    up: RawUpstream | None = None

    @property
    def url(self) -> str:
        assert self.up is not None
        return self.up.url


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


@contextlib.asynccontextmanager
async def recording_upstream() -> AsyncIterator[Recorder]:
    """A keep-alive upstream that parses every request strictly and answers `ok <target>`."""
    rec = Recorder()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            rec.requests.append(req)
            writer.write(answer(b"ok " + req.target.encode()))
            await writer.drain()

    async with run_raw_upstream(handler) as up:
        rec.up = up
        yield rec


def sequence(*replies: bytes, hold: bool = True) -> RawHandler:
    """A keep-alive upstream that answers the n-th request it receives (over all its
    connections) with `replies[n]` (exact bytes), and a plain 200 after them."""
    count = [0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            n = count[0]
            count[0] += 1
            writer.write(replies[n] if n < len(replies) else answer(b"clean " +
                                                                   req.target.encode()))
            await writer.drain()
        if hold:
            await reader.read()

    return handler
