"""Passive health, as Envoy's outlier detection: the proxied requests are the probes.

An endpoint whose connects fail or whose connections reset `consecutive_failures` times in a
row (any answer ends the run) leaves the rotation for `base_ejection` seconds, each repeat
ejection twice as long up to `max_ejection`, unless that would leave its version fewer than
`min_healthy` endpoints. An endpoint that behaved for twice the cap starts from the base again.

Everything that reads or writes an endpoint's health is here. The state lives on the
endpoint's `Pool` (it inherits `PassiveHealth`) so the per-request check is one attribute read
(`pool.ejected`, in `VersionRuntime.next_pool`); the exchange reports failures and answers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from splitproxy.dataplane.plane import EndpointHealth

if TYPE_CHECKING:
    from splitproxy.dataplane.http.pool import Pool
    from splitproxy.dataplane.http.runtime import CompiledRoute, VersionRuntime

log = logging.getLogger("splitproxy.health")


class PassiveHealth:
    """One endpoint's health record; the base class of its connection pool."""

    __slots__ = ("failures", "ejected", "ejections", "ejected_at", "_returns")

    def __init__(self) -> None:
        self.failures = 0  # consecutive connect failures and resets
        self.ejected = False
        self.ejections = 0  # times ejected recently; each ejection lasts twice the previous
        self.ejected_at = 0.0
        self._returns: asyncio.TimerHandle | None = None  # the end of the current ejection

    def answered(self) -> None:
        """The endpoint answered: a run of failures ends (called only when there was one)."""
        self.failures = 0

    def eject(self, loop: asyncio.AbstractEventLoop, base: float, cap: float, key: str) -> float:
        """Take the endpoint out of rotation; returns for how long."""
        now = loop.time()
        if self.ejections and now - self.ejected_at > 2 * cap:
            self.ejections = 0  # behaved for long enough: start from the base period again
        period: float = min(cap, base * 2.0**self.ejections)
        self.ejections += 1
        self.ejected = True
        self.ejected_at = now
        self.failures = 0
        self._returns = loop.call_later(period, self._return, key)
        return period

    def _return(self, key: str) -> None:
        self.ejected = False
        self._returns = None
        log.info("endpoint %s returns to rotation", key)

    def forget_ejection(self) -> None:
        """The endpoint left the config: its ejection ends with it, no timer left behind."""
        if self._returns is not None:
            self._returns.cancel()
            self._returns = None


def record_failure(version: VersionRuntime, pool: Pool) -> None:
    """A connect failure or reset of `pool`'s endpoint, serving `version`: enough in a row
    eject it, unless that would leave fewer than `min_healthy` endpoints."""
    pool.failures += 1
    rules = version.health
    if pool.ejected or pool.failures < rules.consecutive_failures:
        return
    healthy = sum(1 for p in version.pools if not p.ejected and not p.probe_down)
    if healthy - 1 < rules.min_healthy:
        return
    period = pool.eject(pool.loop, rules.base_ejection, rules.max_ejection, pool.endpoint.name)
    pool.close_idle()
    log.warning(
        "ejected endpoint %s of %s/%s for %.0fs after %d consecutive failures",
        pool.endpoint.name, version.route, version.name, period, rules.consecutive_failures,
    )


def report(routes: tuple[CompiledRoute, ...]) -> list[EndpointHealth]:
    """Every endpoint of every version, as `/status` shows it."""
    return [
        EndpointHealth(route.entry.name, version.name, pool.endpoint.name,
                       not pool.ejected and not pool.probe_down, pool.failures, pool.ejections,
                       passive_up=not pool.ejected)
        for route in routes
        for version in route.versions.values()
        for pool in version.pools
    ]
