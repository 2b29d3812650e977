"""Active health checks, as nginx's `health_check` and Envoy's: each endpoint that a version
(or its route) asks to be checked gets an HTTP/1.1 GET of its health path every `interval`, on
a connection of its own (never one of the request pool's, so a probe never waits behind client
traffic nor leaves a half-read connection for a client request to reuse).

`unhealthy_threshold` failures in a row (a connect error, a reset, no status line within
`timeout`, or a status that is not expected) take the endpoint out of rotation:
`pool.probe_down`, read per request beside the passive `pool.ejected` in
`VersionRuntime.next_pool`. `healthy_threshold` successes in a row bring it back. The first
result counts at once: an endpoint starts in rotation and is taken out only by failures.

Every data-plane process probes on its own (with `--workers N`, N probes per interval per
endpoint): no state crosses processes, so a worker acts on its own probe at once and a worker
that dies takes no shared state with it. The cost, N small GETs per interval, is what nginx
open source pays as well (its workers do not share upstream state without a `zone`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from splitproxy.config.healthcheck import HealthCheck
from splitproxy.config.models import Config
from splitproxy.dataplane.http import health
from splitproxy.dataplane.http.pool import Pools
from splitproxy.dataplane.http.probe_h2 import probe_h2, probe_host
from splitproxy.dataplane.http.runtime import CompiledRoute
from splitproxy.dataplane.plane import EndpointHealth
from splitproxy.dataplane.tls import client_context, server_hostname
from splitproxy.routing.table import Endpoint

log = logging.getLogger("splitproxy.health")


@dataclass(slots=True)
class ActiveState:
    """One endpoint's active-check record."""

    down: bool = False
    successes: int = 0  # in a row
    failures: int = 0  # in a row
    last_result: str = "none"  # "success", "failure" or "none" before the first probe
    last_error: str | None = None


def checks_of(config: Config) -> dict[Endpoint, HealthCheck]:
    """Every endpoint to probe and how; an endpoint named by several versions is probed once,
    by the check of the first version (in config order) that has one."""
    wanted: dict[Endpoint, HealthCheck] = {}
    for route in config.routes:
        for version in route.versions.values():
            check = version.health_check or route.health_check
            if check is None:
                continue
            for url in version.endpoints:
                wanted.setdefault(Endpoint.of(url, version.tls, version.protocol.value), check)
    return wanted


async def probe(endpoint: Endpoint, check: HealthCheck) -> str | None:
    """One GET of the health path: None on success, else why it failed."""
    tls = endpoint.tls
    request = (f"GET {check.path} HTTP/1.1\r\nHost: {probe_host(endpoint, check)}\r\n"
               "User-Agent: splitproxy-health-check\r\nConnection: close\r\n\r\n").encode()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port,
                ssl=client_context(tls) if tls is not None else None,
                server_hostname=server_hostname(tls, endpoint.host) if tls is not None else None)
            writer.write(request)
            line = await reader.readline()
    except TimeoutError:
        return f"no answer within {check.timeout:g}s"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return "no HTTP status line" if not line else f"bad status line {line[:60]!r}"
    status = int(parts[1])
    ok = status in check.expect_status if check.expect_status else 200 <= status < 400
    return None if ok else f"status {status}"


class Prober:
    """One task per checked endpoint in this process; `configure` follows each reload."""

    def __init__(self, pools: Pools) -> None:
        self.pools = pools
        self.states: dict[Endpoint, ActiveState] = {}
        self._tasks: dict[Endpoint, tuple[HealthCheck, asyncio.Task[None]]] = {}

    def configure(self, config: Config) -> None:
        """Start probing endpoints newly checked, stop those no longer, restart changed ones."""
        wanted = checks_of(config)
        for endpoint, (check, task) in list(self._tasks.items()):
            if wanted.get(endpoint) != check:
                task.cancel()
                del self._tasks[endpoint]
                if endpoint not in wanted:
                    self.states.pop(endpoint, None)
                    if (pool := self.pools.find(endpoint)) is not None:
                        pool.probe_down = False
        for endpoint, check in wanted.items():
            if endpoint not in self._tasks:
                self.states.setdefault(endpoint, ActiveState())
                self._tasks[endpoint] = (check, self.pools.loop.create_task(
                    self._run(endpoint, check)))

    async def _run(self, endpoint: Endpoint, check: HealthCheck) -> None:
        while True:
            # A version spoken to over HTTP/2 is probed over HTTP/2 (`probe_h2`).
            self.record(endpoint, check, await (probe(endpoint, check) if endpoint.protocol
                                                == "http1" else probe_h2(endpoint, check)))
            await asyncio.sleep(check.interval)

    def record(self, endpoint: Endpoint, check: HealthCheck, error: str | None) -> None:
        state = self.states[endpoint]
        if error is None:
            state.successes += 1
            state.failures = 0
            state.last_result = "success"
            if state.down and state.successes >= check.healthy_threshold:
                state.down = False
                log.info("endpoint %s passes its health check %s again: back in rotation",
                         endpoint.name, check.path)
        else:
            state.failures += 1
            state.successes = 0
            state.last_result = "failure"
            state.last_error = error
            if not state.down and state.failures >= check.unhealthy_threshold:
                state.down = True
                log.warning("endpoint %s failed its health check %s %d times in a row (%s): "
                            "out of rotation", endpoint.name, check.path, state.failures, error)
        # Set on the pool every time: a pool made again after a reload starts as up.
        pool = self.pools.find(endpoint)
        if pool is not None:
            pool.probe_down = state.down
            if state.down:
                pool.close_idle()

    def close(self) -> None:
        for _, task in self._tasks.values():
            task.cancel()
        self._tasks.clear()


def report(routes: tuple[CompiledRoute, ...], prober: Prober | None) -> list[EndpointHealth]:
    """Every endpoint, passive health (`health.report`) with its active check's state."""
    rows = health.report(routes)
    if prober is None or not prober.states:
        return rows
    # By the endpoint itself (host, port and TLS settings), in the rows' order: never by
    # host:port, which an http:// and an https:// endpoint may share.
    pools = [pool for route in routes for version in route.versions.values()
             for pool in version.pools]
    out = []
    for row, pool in zip(rows, pools, strict=True):
        state = prober.states.get(pool.endpoint)
        out.append(row if state is None else replace(
            row, active="down" if state.down else "up", last_result=state.last_result,
            last_error=state.last_error))
    return out
