"""Fake services the control plane talks to: a webhook receiver and Prometheus' query API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .upstream import serve_app


@dataclass
class Hook:
    """A webhook receiver: answers `answer` to every POST and keeps the JSON payloads."""

    answer: int = 200
    port: int = 0
    payloads: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[dict[str, Any]]:
        return [p for p in self.payloads if p["_path"] == path]

    def app(self) -> web.Application:
        async def receive(request: web.Request) -> web.Response:
            body = await request.json()
            self.payloads.append({**body, "_path": request.path})
            return web.Response(status=self.answer, text="ok")

        app = web.Application()
        app.router.add_post("/{tail:.*}", receive)
        return app


@contextlib.asynccontextmanager
async def run_hook() -> AsyncIterator[Hook]:
    hook = Hook()
    async with serve_app(hook.app()) as port:
        hook.port = port
        yield hook


@dataclass
class FakePrometheus:
    """Prometheus' query API on 127.0.0.1, answering healthy raw counters for `versions`
    after `delay` seconds (real time): each answer 1000 more requests (code 200) and 1000 more
    timed requests, none failed or slow. Counts queries in flight and answered."""

    delay: float = 1.0
    port: int = 0
    in_flight: int = 0
    answered: int = 0
    held: asyncio.Event | None = None  # when set: no answer until `held` is set
    versions: tuple[str, ...] = ("stable", "canary")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        async def query(request: web.Request) -> web.Response:
            self.in_flight += 1
            try:
                if self.held is not None:
                    await self.held.wait()
                await asyncio.sleep(self.delay)
            finally:
                self.in_flight -= 1
            self.answered += 1
            n = str(1000 * self.answered)
            result: list[dict[str, Any]] = []
            for v in self.versions:
                common = {"route": "shop", "version": v, "instance": "a", "job": "x"}
                result += [
                    {"metric": {"__name__": "splitproxy_requests_total", "code": "200",
                                **common}, "value": [0, n]},
                    {"metric": {"__name__": "splitproxy_upstream_timed_requests_total",
                                **common}, "value": [0, n]},
                ]
            return web.json_response({"status": "success", "data": {
                "resultType": "vector", "result": result}})

        app = web.Application()
        app.router.add_get("/api/v1/query", query)
        return app


@contextlib.asynccontextmanager
async def run_fake_prometheus(delay: float = 1.0) -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus(delay)
    async with serve_app(fake.app()) as port:
        fake.port = port
        yield fake


@dataclass
class Receiver:
    """A notification receiver that scripts its answers: each POST gets the next status of
    `script` (then 200, with `Retry-After: retry_after` if set); the first attempt of an
    event in `fail_first` (on `fail_path` only, if set) gets 500; requests to a path in
    `hold` (every path, with `hold_all`) wait for `release`. Keeps (path, headers, body) of
    every attempt."""

    script: list[int] = field(default_factory=list)
    retry_after: str | None = None
    fail_first: set[str] = field(default_factory=set)
    fail_path: str | None = None
    hold: set[str] = field(default_factory=set)
    hold_all: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    got: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[dict[str, Any]]:
        return [b for p, _, b in self.got if p == path]

    def bodies(self) -> list[dict[str, Any]]:
        return [b for _, _, b in self.got]

    def headers(self) -> list[dict[str, str]]:
        return [h for _, h, _ in self.got]

    def app(self) -> web.Application:
        async def receive(request: web.Request) -> web.Response:
            body = await request.json()
            self.got.append((request.path, dict(request.headers), body))
            if self.hold_all or request.path in self.hold:
                await self.release.wait()
            if request.headers.get("X-Splitproxy-Event", "") in self.fail_first \
                    and self.fail_path in (None, request.path) \
                    and request.headers.get("X-Splitproxy-Attempt") == "1":
                return web.Response(status=500, text="try again")
            status = self.script.pop(0) if self.script else 200
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.Response(status=status, text="ok", headers=headers)

        app = web.Application()
        app.router.add_post("/{tail:.*}", receive)
        return app


@contextlib.asynccontextmanager
async def run_receiver(**kw: Any) -> AsyncIterator[Receiver]:
    """A started `Receiver`; whatever it holds is released before it stops."""
    rec = Receiver(**kw)
    async with serve_app(rec.app()) as port:
        rec.port = port
        try:
            yield rec
        finally:
            rec.release.set()
