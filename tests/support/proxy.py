"""The data plane under test: an in-process `ProxyServer` on a free port, stopped on exit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from splitproxy.config.models import Config
from splitproxy.dataplane.server import ProxyServer

from .configs import proxy_config, route
from .upstream import Upstream, run_upstream
from .waiting import WAIT


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


@contextlib.asynccontextmanager
async def proxied(
    name: str = "stable", **sections: Any
) -> AsyncIterator[tuple[Upstream, ProxyServer]]:
    """The common case: one upstream as the only version of route "shop"."""
    async with run_upstream(name) as up:
        async with run_proxy(proxy_config([route({name: up.url})], **sections)) as srv:
            yield up, srv


def version_errors(srv: ProxyServer, version: str = "stable", name: str = "shop") -> dict[str, int]:
    """The non-zero upstream error counters of one version."""
    return {k: v for k, v in srv.stats.get(name, version).errors.items() if v}
