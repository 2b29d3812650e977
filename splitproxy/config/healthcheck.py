"""Active health checks (nginx `health_check`, Envoy's active health checking): per version,
or route-wide as a default, the data plane probes each endpoint with its own HTTP/1.1 GET."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, Strict, field_validator

from splitproxy.config.units import Frozen, HostName, Positive, Timeout


class HealthCheck(Frozen):
    """How an endpoint is probed, and how many results in a row change its state."""

    # gRPC health checking (grpc.health.v1.Health/Check) of this service instead of a GET of
    # `path`; "" asks about the server as a whole. For versions with protocol h2 or auto.
    grpc_service: str | None = None
    path: str = "/healthz"
    # The next probe starts `interval` after the previous one ended: probes of one endpoint
    # never overlap, whatever the timeout.
    interval: Timeout = 5.0
    timeout: Timeout = 1.0  # for the connection and the status line
    healthy_threshold: Positive = 2  # successes in a row that bring an endpoint back
    unhealthy_threshold: Positive = 2  # failures in a row that take it out
    # Statuses that count as a success; none: any 2xx or 3xx.
    expect_status: tuple[Annotated[int, Strict(), Field(ge=100, le=599)], ...] = ()
    # The probe's Host header (Envoy's `host`), for an upstream that serves the health path
    # on one virtual host only. Default: the endpoint's `tls.server_name` when set, else the
    # endpoint's own host and port as written in its URL.
    host: HostName | None = None

    @field_validator("path")
    @classmethod
    def _origin_form(cls, path: str) -> str:
        if not path.startswith("/") or any(c in path for c in " \r\n\t"):
            raise ValueError("must start with / and hold no spaces or line breaks")
        return path
