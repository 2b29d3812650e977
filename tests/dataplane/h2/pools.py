"""An HTTP/2 pool to one endpoint as the data plane builds it: the endpoint's HTTP/1.1 `Pool`
(its health record) and the `H2Pools` registry, closed after the test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from splitproxy.config.models import Health, Limits, Timeouts
from splitproxy.config.tls import UpstreamTls
from splitproxy.dataplane.h2.upstream import H2Pool, H2Pools
from splitproxy.dataplane.h2.upstream_stream import Headers
from splitproxy.dataplane.http.pool import Pools
from splitproxy.dataplane.http.runtime import VersionRuntime
from splitproxy.dataplane.stats import Stats
from splitproxy.routing.table import Endpoint


def request(path: str, method: str = "GET", authority: str = "upstream",
            extra: Headers | None = None) -> Headers:
    return [(b":method", method.encode()), (b":scheme", b"http"),
            (b":authority", authority.encode()), (b":path", path.encode()), *(extra or [])]


@contextlib.asynccontextmanager
async def h2_pool(port: int, *, protocol: str = "h2", tls: UpstreamTls | None = None,
                  timeouts: Timeouts | None = None,
                  limits: Limits | None = None) -> AsyncIterator[H2Pool]:
    loop = asyncio.get_running_loop()
    timeouts = timeouts or Timeouts()
    pools = Pools(loop, timeouts.connect, timeouts.idle)
    h2pools = H2Pools(loop, timeouts, limits or Limits())
    pool = h2pools.get(pools.get(Endpoint("127.0.0.1", port, tls, protocol)))
    try:
        yield pool
    finally:
        h2pools.close()
        pools.close()


class Version:
    """A version of two or more endpoints as the data plane compiles it, with HTTP/2 pools."""

    def __init__(self, ports: list[int], health: Health) -> None:
        loop = asyncio.get_running_loop()
        timeouts = Timeouts()
        self.pools = Pools(loop, timeouts.connect, timeouts.idle)
        self.h2pools = H2Pools(loop, timeouts, Limits())
        self.stats = Stats()
        self.version = VersionRuntime(
            "svc", "canary",
            tuple(self.pools.get(Endpoint("127.0.0.1", p, None, "h2")) for p in ports),
            self.stats, health)

    def close(self) -> None:
        self.h2pools.close()
        self.pools.close()
