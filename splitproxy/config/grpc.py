"""HTTP/2 and gRPC settings of the config: how a version's endpoints are spoken to
(`versions.<name>.protocol`) and which gRPC status codes count as errors of a version
(`routes[].grpc.error_codes`).

The default error codes are those gRPC's own status mapping (google.rpc.Code, as used by
grpc-gateway and Envoy's gRPC-JSON transcoder) turns into an HTTP 5xx: the server's fault,
what a canary is judged on. Codes that map to 4xx or 499 (NOT_FOUND, INVALID_ARGUMENT,
PERMISSION_DENIED, RESOURCE_EXHAUSTED = 429, CANCELLED = 499, ...) are the caller's
business or the caller's own deadline, and count as answers, as a 4xx does.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from splitproxy.config.units import Frozen


class UpstreamProtocol(StrEnum):
    HTTP1 = "http1"  # HTTP/1.1 (the default)
    H2 = "h2"  # HTTP/2: prior knowledge on http:// (h2c), ALPN h2 on https://
    AUTO = "auto"  # https:// only: HTTP/2 when the endpoint's ALPN picks h2, else HTTP/1.1


class GrpcCode(IntEnum):
    """gRPC status codes (grpc/doc/statuscodes.md)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# google.rpc.Code's HTTP mapping for the codes that are the server's fault.
SERVER_ERROR_STATUS: dict[GrpcCode, int] = {
    GrpcCode.UNKNOWN: 500,
    GrpcCode.DEADLINE_EXCEEDED: 504,
    GrpcCode.UNIMPLEMENTED: 501,
    GrpcCode.INTERNAL: 500,
    GrpcCode.UNAVAILABLE: 503,
    GrpcCode.DATA_LOSS: 500,
}
DEFAULT_ERROR_CODES = tuple(SERVER_ERROR_STATUS)


def _code(value: object) -> GrpcCode:
    """`UNAVAILABLE`, `unavailable` or `14` -> GrpcCode.UNAVAILABLE."""
    if isinstance(value, bool):
        raise ValueError(f"expected a gRPC status code name or number, got {value!r}")
    if isinstance(value, int):
        try:
            return GrpcCode(value)
        except ValueError:
            raise ValueError(f"gRPC status codes are 0..16, got {value}") from None
    if isinstance(value, str):
        name = value.strip().upper()
        if name in GrpcCode.__members__:
            return GrpcCode[name]
        if name.isdigit():
            return _code(int(name))
    raise ValueError(f"unknown gRPC status code {value!r} (names as UNAVAILABLE, or 0..16)")


def _not_ok(code: GrpcCode) -> GrpcCode:
    if code is GrpcCode.OK:
        raise ValueError("OK is never an error")
    return code


ErrorCode = Annotated[GrpcCode, BeforeValidator(_code), AfterValidator(_not_ok)]


class Grpc(Frozen):
    """A route's gRPC rules (requests with `content-type: application/grpc...`)."""

    # A response whose grpc-status is one of these counts as an error of its version, for
    # the metrics and the guard, as a 5xx does (README: HTTP/2 and gRPC).
    error_codes: tuple[ErrorCode, ...] = DEFAULT_ERROR_CODES
