"""Clients through the proxy under test that count who answered (X-Served-By): a few
sequential requests, or steady load in the background that keeps every answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .rawhttp import RawClient
from .waiting import WAIT, wait_until


async def served_by(c: RawClient, n: int, target: str = "/", **kw: Any) -> Counter[str]:
    """`n` sequential GETs on one keep-alive connection through the proxy (`kw`: headers, as
    `build_request` takes them); X-Served-By counts."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        resp = await c.request("GET", target, **kw)
        assert resp.status == 200, resp.text
        seen[resp.header("x-served-by") or "?"] += 1
    return seen


async def hit(port: int, n: int = 1, headers: dict[str, str] | None = None) -> Counter[str]:
    """`n` sequential GETs through the proxy on one keep-alive connection, without a cookie
    jar; counts X-Served-By (with the status when it is not 200: "canary 500")."""
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        for _ in range(n):
            async with session.get(f"http://127.0.0.1:{port}/", headers=headers) as resp:
                await resp.read()
                by = resp.headers.get("X-Served-By", "?")
                seen[by if resp.status == 200 else f"{by} {resp.status}"] += 1
    return seen


@dataclass(frozen=True)
class Hit:
    kind: str  # which client loop sent it
    key: str  # the user id, cookie or pin it carried ("" for none)
    sent: float  # wall clock, as the engine's `aborted_at`
    done: float
    status: int
    served_by: str


Headers = Callable[[int], tuple[str, dict[str, str]]]  # iteration -> (key, headers)


def plain(i: int) -> tuple[str, dict[str, str]]:
    return "", {}


class Load:
    """Steady clients through the proxy: one task per `kinds` entry, each looping GETs on its
    own keep-alive connection (no cookie jar: a test sends the cookies it means)."""

    def __init__(self, port: int, kinds: Mapping[str, Headers], gap: float = 0.004) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.kinds = kinds
        self.gap = gap
        self.hits: list[Hit] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()

    @classmethod
    def steady(cls, port: int, clients: int, gap: float = 0.004) -> Load:
        """`clients` loops of plain GETs, named c0, c1, ..."""
        return cls(port, {f"c{i}": plain for i in range(clients)}, gap)

    async def _loop(self, kind: str, headers: Headers) -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                         timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
            i = 0
            while not self._stop.is_set():
                key, hdrs = headers(i)
                i += 1
                sent = time.time()
                try:
                    async with session.get(self.url, headers=hdrs) as resp:
                        await resp.read()
                        self.hits.append(Hit(kind, key, sent, time.time(), resp.status,
                                             resp.headers.get("X-Served-By", "?")))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.failures.append(f"{kind}: {exc!r}")
                await asyncio.sleep(self.gap)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        tasks = [asyncio.create_task(self._loop(k, h)) for k, h in self.kinds.items()]
        try:
            yield self
        finally:
            self._stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

    def since(self, wall: float) -> list[Hit]:
        return [h for h in self.hits if h.sent > wall]

    def answered(self, status: int = 200) -> list[Hit]:
        return [h for h in self.hits if h.status == status]

    async def more_answers(self, n: int, timeout: float = WAIT) -> None:
        """Waits until `n` more requests than now have been answered 200."""
        target = len(self.answered()) + n
        await wait_until(lambda: len(self.answered()) >= target, timeout,
                         lambda: f"{n} more answers (got {len(self.answered()) - target + n})")

    def every_client_since(self, wall: float) -> bool:
        """True once every client loop has had an answer to a request sent after `wall`: what
        any of them sent before it has been answered."""
        return {h.kind for h in self.since(wall)} == set(self.kinds)
