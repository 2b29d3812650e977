"""What the control plane sees of the data plane: one interface, two implementations (one
in-process `server.ProxyServer`, or the worker processes of `workers.WorkerPool`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from splitproxy.config.models import Config
from splitproxy.dataplane.procstats import Usage
from splitproxy.dataplane.stats import Stats
from splitproxy.routing.table import RoutingTable


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """One endpoint's health, passive and active, as `/status` and the metrics show it."""

    route: str
    version: str
    endpoint: str  # host:port for http://, the URL for https:// (`Endpoint.name`)
    up: bool  # in rotation: neither ejected (passive) nor failing its active check
    failures: int  # consecutive connect failures / resets
    ejections: int
    passive_up: bool = True  # not ejected
    active: str = "off"  # "up", "down", or "off" when no health_check applies
    last_result: str = "none"  # of the last probe: "success", "failure", "none"
    last_error: str | None = None  # of the last failed probe


class DataPlane(Protocol):
    """The proxying side, as the controller and the service drive it."""

    @property
    def listening(self) -> bool: ...
    @property
    def draining(self) -> bool: ...
    @property
    def port(self) -> int: ...
    @property
    def stats(self) -> Stats: ...

    async def start(self, routing: RoutingTable) -> None:
        """Listen and serve `routing`, the first table."""

    async def stop(self, drain: float | None = None) -> None:
        """Stop accepting; requests in flight get up to `drain` seconds (default: config's)."""

    def reconfigure(self, config: Config, routing: RoutingTable) -> None: ...
    def install(self, routing: RoutingTable) -> None: ...
    def endpoint_health(self) -> list[EndpointHealth]: ...
    def worker_usage(self) -> list[tuple[int, Usage]]:
        """(worker index, its memory, CPU and descriptors) of every worker process that has
        reported; none when one process serves and controls (see `process_*`)."""
    def busy_poll_window(self) -> float:
        """How long a worker polls after a read (`performance.busy_poll`, `auto` as chosen
        for this machine by `cpuidle`); 0: it does not."""
