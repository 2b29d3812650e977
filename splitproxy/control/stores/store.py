"""Rollout state persistence: one interface, a JSON file (default) or Redis (many replicas).

Both stores keep one state per route *and identity* and write by compare-and-set on the
state's `seq`: a write lands only on top of the state it was decided from. The engine has no
branch on which store it has; a failed write raises `StoreUnavailable` and is retried by the
engine until it lands.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from splitproxy.config.models import Backend, Config, ConfigError
from splitproxy.control.sources.fleet import CountsBoard
from splitproxy.rollout import FORMAT, RouteState

log = logging.getLogger("splitproxy.control.stores.store")


class StoreUnavailable(Exception):
    """The store could not be read or written now; try again later."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """What to look up for a route: its identity, and the format-1 revision hashes it may
    have been stored under (to migrate)."""

    identity: str
    legacy: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Loaded:
    state: RouteState | None = None  # stored for the wanted identity
    previous: RouteState | None = None  # the route's latest other state (identity, format 1)


class StateStore(Protocol):
    # How often to re-read for other replicas' decisions; None: nobody else writes.
    refresh_interval: float | None

    async def open(self, on_change: Callable[[], None]) -> None:
        """Connect; `on_change` is called when another replica may have written."""
        ...

    async def close(self) -> None: ...

    async def load(self, wanted: Mapping[str, Wanted]) -> dict[str, Loaded] | None:
        """At start-up and for routes a reload adds; None when unreachable."""
        ...

    async def fetch(self, identities: Mapping[str, str]) -> dict[str, RouteState] | None:
        """The stored state of each route's identity (for peers' decisions); None when
        unreachable."""
        ...

    async def put(self, route: str, state: RouteState, expected: int) -> RouteState | None:
        """Compare-and-set: write only if the stored seq for (route, identity) is `expected`
        (-1: none stored). None: written; else the stored state that won. Raises
        StoreUnavailable."""
        ...

    async def retire(self, route: str, identity: str) -> None:
        """The route left `identity` (or the config): its state may go."""
        ...

    def is_leader(self) -> bool:
        """Whether this replica runs the step timers and judges (a lease, on real time)."""
        ...

    def counts_board(self) -> CountsBoard | None:
        """Where replicas share their counters with the one that judges (None: no other
        replica shares this store)."""
        ...

    def describe(self) -> dict[str, Any]:
        """For /status: backend, up, error and where."""
        ...


def state_path(config: Config, config_path: Path) -> Path:
    if config.state.path:
        path = Path(config.state.path)
        return path if path.is_absolute() else config_path.parent / path
    return config_path.with_name(config_path.stem + ".state.json")


def make_store(config: Config, config_path: Path) -> StateStore:
    if config.state.backend == Backend.REDIS:
        from splitproxy.control.stores.redis_store import RedisStore

        return RedisStore(config.state.url, config.state.key_prefix, config.state.lease)
    store = FileStore(state_path(config, config_path))
    store.check_writable()
    return store


class FileStore:
    """A JSON file written atomically (temp file, fsync, rename), off the event loop. One
    process writes it, so its compare-and-set is against what this process wrote."""

    refresh_interval: float | None = None

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_error: str | None = None  # the last write's failure; cleared by a good write
        self.load_error: str | None = None  # what was wrong with the file at start-up
        self.unreadable: str | None = None  # the same, without what the proxy did about it
        self._routes: dict[str, RouteState] | None = None  # the file as last read or written
        self._lock = asyncio.Lock()  # one read-modify-write of the file at a time

    def check_writable(self) -> None:
        """Fail at start-up, not at the first abort, when the state cannot be written."""
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".splitproxy-probe-",
                                       suffix=".tmp")
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise ConfigError([
                f"state.path: cannot write rollout state to {self.path}: {exc.strerror}"
            ]) from exc

    async def open(self, on_change: Callable[[], None]) -> None:
        return None

    async def close(self) -> None:
        return None

    def _read(self) -> dict[str, RouteState]:
        if self._routes is not None:
            return self._routes
        self._routes = {}
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return self._routes
        except OSError as exc:
            log.error("cannot read rollout state %s (%s): starting fresh", self.path, exc)
            self.unreadable = f"unreadable state file: {exc}"
            self.load_error = f"unreadable state file, started fresh: {exc}"
            return self._routes
        try:
            data = json.loads(raw)
            self._routes = {str(n): RouteState.from_json(s) for n, s in data["routes"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("rollout state %s is corrupt (%s): starting fresh", self.path, exc)
            self.unreadable = f"corrupt state file: {exc}"
            self.load_error = f"corrupt state file, started fresh: {exc}"
        return self._routes

    async def load(self, wanted: Mapping[str, Wanted]) -> dict[str, Loaded]:
        routes = self._read()
        out = {}
        for name, want in wanted.items():
            stored = routes.get(name)
            if stored is not None and stored.identity == want.identity:
                out[name] = Loaded(stored, None)
            else:
                out[name] = Loaded(None, stored)
        return out

    async def fetch(self, identities: Mapping[str, str]) -> dict[str, RouteState]:
        routes = self._read()
        return {n: s for n, s in routes.items() if identities.get(n) == s.identity}

    async def put(self, route: str, state: RouteState, expected: int) -> RouteState | None:
        async with self._lock:
            routes = self._read()
            current = routes.get(route)
            # Nothing held for this identity (or the file was lost): ours is the newest.
            if current is not None and current.identity == state.identity \
                    and current.seq != expected:
                return current
            await self._write({**routes, route: state})
            return None

    async def retire(self, route: str, identity: str) -> None:
        async with self._lock:
            routes = self._read()
            current = routes.get(route)
            if current is not None and current.identity == identity:
                rest = {n: s for n, s in routes.items() if n != route}
                try:
                    await self._write(rest)
                except StoreUnavailable:
                    pass  # dropped with the next write that lands

    async def _write(self, routes: dict[str, RouteState]) -> None:
        body = json.dumps(
            {"version": FORMAT, "routes": {n: s.to_json() for n, s in routes.items()}},
            indent=1,
        )
        try:
            await asyncio.to_thread(_write_atomically, self.path, body)
        except OSError as exc:
            self.last_error = f"cannot write {self.path}: {exc}"
            raise StoreUnavailable(self.last_error) from exc
        self._routes = routes
        self.last_error = None

    def is_leader(self) -> bool:
        return True

    def counts_board(self) -> CountsBoard | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"backend": Backend.FILE, "path": str(self.path), "up": self.last_error is None,
                "error": self.last_error or self.load_error}


def _write_atomically(path: Path, body: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".splitproxy-state-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
