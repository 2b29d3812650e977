"""Upstreams written to misbehave, and a recording one, for the hostile-input tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..conftest import RawHandler, RawRequest, RawUpstream, read_request, run_raw_upstream


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
