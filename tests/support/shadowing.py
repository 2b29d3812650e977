"""Upstreams for the shadow-traffic tests: each answers with a function of the request (or
never answers) and keeps every request it read, marker headers included."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from .rawupstream import RawRequest, read_request, run_raw_upstream

Reply = Callable[[RawRequest], tuple[int, bytes, bytes]]  # status, body, extra header lines


@dataclass
class Served:
    url: str = ""
    requests: list[RawRequest] = field(default_factory=list)
    connections: int = 0


@contextlib.asynccontextmanager
async def serving(reply: Reply | None, one_per_connection: bool = False
                  ) -> AsyncIterator[Served]:
    """An upstream answering `reply(request)`; None: reads requests and never answers.
    `one_per_connection`: answers one request per connection (without a `Connection:
    close`) and closes the connection when the next one arrives on it, unanswered and not
    recorded: a server whose keep-alive timeout passed just as the request came."""
    served = Served()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.connections += 1
        answered = 0
        while (req := await read_request(reader)) is not None:
            if one_per_connection and answered:
                return
            answered += 1
            served.requests.append(req)
            if reply is None:
                await reader.read()  # hangs until the proxy gives up
                return
            status, body, extra = reply(req)
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n" % (
                status, len(body), extra) + body)
            await writer.drain()

    async with run_raw_upstream(handler) as up:
        served.url = up.url
        yield served


def json_reply(who: str, status: int = 200, **fields: Any) -> Reply:
    def reply(req: RawRequest) -> tuple[int, bytes, bytes]:
        body = json.dumps({"path": req.target, "generated_at": who, **fields}).encode()
        return status, body, b"X-Served-By: " + who.encode() + b"\r\n"
    return reply


