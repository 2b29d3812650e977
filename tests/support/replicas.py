"""Several in-process `Service`s sharing one Redis (and Prometheus): each replica has its own
config file, proxy and admin ports and no file watcher.

(Endpoints are not part of a rollout's identity: replicas listing different endpoints share
one state in Redis; replicas on different revisions, steps or version names keep separate
ones.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from splitproxy.control.service import Service
from splitproxy.rollout import RouteState

from .configs import rollout_config
from .load import Hit
from .processes import RedisServer
from .service import metric, run_service, scrape, status, write_config
from .upstream import Upstream
from .waiting import WAIT, wait_until


def replica_config(
    ups: dict[str, Upstream],
    *,
    redis: RedisServer | None,
    prefix: str = "splitproxy:",
    lease: str = "1s",
    weights: dict[str, int] | None = None,
    analysis: dict[str, Any] | None = None,
    rollout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Route "shop": stable (the baseline) and canary; rollout state in `redis` when given,
    else in a file beside the config."""
    cfg = rollout_config({n: u.url for n, u in ups.items()},
                         weights=weights or {"stable": 50, "canary": 50},
                         analysis=analysis, rollout=rollout)
    cfg["timeouts"]["drain"] = "1s"
    if redis is not None:
        cfg["state"] = {"backend": "redis", "url": redis.url, "key_prefix": prefix,
                        "lease": lease}
    return cfg


@dataclass
class Replica:
    name: str
    svc: Service
    admin: aiohttp.ClientSession

    @property
    def proxy_port(self) -> int:
        return self.svc.proxy_port

    @property
    def admin_port(self) -> int:
        return self.svc.admin_port

    async def status(self) -> dict[str, Any]:
        return await status(self.admin)

    async def rollout(self) -> dict[str, Any]:
        body = await self.status()
        shop: dict[str, Any] = body["routes"][0]["rollout"]
        return shop

    async def canary_weight(self) -> int:
        body = await self.status()
        return int(body["routes"][0]["versions"]["canary"]["effective_weight"])

    async def store(self) -> dict[str, Any]:
        body = await self.status()
        state_store: dict[str, Any] = body["state_store"]
        return state_store

    async def act(self, action: str, **query: str) -> tuple[int, dict[str, Any]]:
        async with self.admin.post(f"/routes/shop/{action}", params=query) as resp:
            return resp.status, await resp.json()

    async def readyz(self) -> int:
        async with self.admin.get("/readyz") as resp:
            await resp.read()
            return resp.status

    async def metric(self, name: str, **labels: str) -> float | None:
        return metric(await scrape(self.admin), name, **labels)


async def judge_of(replicas: list[Replica]) -> Replica:
    """The one replica that judges (holds the lease): waits until exactly one says so."""
    found: list[Replica] = []

    async def one() -> bool:
        found[:] = [r for r in replicas if (await r.rollout())["judging"]]
        return len(found) == 1

    await wait_until(one, timeout=10, what="one judging replica", interval=0.05)
    return found[0]


@contextlib.asynccontextmanager
async def run_replicas(
    tmp_path: Path, configs: Sequence[dict[str, Any]]
) -> AsyncIterator[list[Replica]]:
    """One Service per config, started one after the other (each in `tmp_path/rN/`); every
    one still running is stopped on exit (drain 1 s)."""
    async with contextlib.AsyncExitStack() as stack:
        replicas = []
        for i, cfg in enumerate(configs):
            path = tmp_path / f"r{i}" / "config.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_config(path, cfg)
            svc = await stack.enter_async_context(run_service(path, watch=False))
            session = await stack.enter_async_context(aiohttp.ClientSession(
                base_url=f"http://127.0.0.1:{svc.admin_port}",
                headers={"X-Splitproxy-Action": "1"},  # as the CLI: an action, not a form
                timeout=aiohttp.ClientTimeout(total=WAIT)))
            replicas.append(Replica(f"r{i}", svc, session))
        yield replicas


def canary_hits(hits: Sequence[Hit]) -> list[Hit]:
    return [h for h in hits if h.served_by == "canary"]



class StoreReads:
    """From now on, counts each replica's finished reads of the shared rollout state (its sync
    loop fetches every refresh interval). `await again()` is the positive signal that every
    replica has looked at the store since, where a test means to show that what they found
    changed nothing."""

    def __init__(self, replicas: Sequence[Replica]) -> None:
        self.done = {r.name: 0 for r in replicas}
        for r in replicas:
            self._count(r)

    def _count(self, replica: Replica) -> None:
        store = replica.svc.controller.store
        fetch = store.fetch

        async def counted(identities: Mapping[str, str]) -> dict[str, RouteState] | None:
            try:
                return await fetch(identities)
            finally:
                self.done[replica.name] += 1

        store.fetch = counted  # type: ignore[method-assign]

    async def again(self, times: int = 2) -> None:
        """Until every replica has finished `times` more reads than now (two: what the first
        one brought has been handled before the second starts)."""
        marks = dict(self.done)
        await wait_until(lambda: all(self.done[n] >= marks[n] + times for n in marks),
                         what=lambda: f"{times} more reads of the store on each: {self.done} "
                                      f"after {marks}")
