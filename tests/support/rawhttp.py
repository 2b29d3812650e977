"""Exact HTTP/1.1 bytes on a client socket: build requests, read and parse responses strictly."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .waiting import WAIT


async def iter_chunked(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
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
            chunks = iter_chunked(self.reader)
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
