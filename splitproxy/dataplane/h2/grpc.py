"""gRPC semantics on top of HTTP/2: which answers are errors of a version, the deadline a call
carries, and the answer the proxy gives when it fails a call itself.

* `grpc_status` reads a response's status: from its trailers, or from its headers when the
  answer is trailers-only; an HTTP status other than 200 is turned into a gRPC code as gRPC
  clients do (grpc/doc/http-grpc-status-mapping.md); none at all is INTERNAL (what clients
  report for a stream that ended without one).
* `record` counts an answered call in the version's counters (`dataplane.stats`): a status
  among the route's `grpc.error_codes` is counted under its HTTP equivalent (UNAVAILABLE 503,
  DEADLINE_EXCEEDED 504, UNIMPLEMENTED 501, others 500), so the guard, the dashboards and
  `splitproxy_requests_total{code=~"5.."}` see it exactly as a 5xx; any other status counts
  as the 200 it was sent with.
* `parse_timeout` reads `grpc-timeout` (`1S`, `250m`, `100000u`; units H M S m u n, at most
  8 digits); the proxy waits for the whole call at most min(its own timeout, that).
* `error_headers` is a trailers-only answer (`:status 200`, `content-type: application/grpc`,
  `grpc-status`, percent-encoded `grpc-message`) for a call the proxy fails itself, the way
  a gRPC server would; `failure_code` says which code each failure gets:

  ===================================================  =====================
  proxy failure                                        grpc-status
  ===================================================  =====================
  no healthy endpoint, connect failure, reset, refused  UNAVAILABLE (14)
  the proxy overloaded (its own 503)                    UNAVAILABLE (14)
  response or call deadline passed (504 "timeout")      DEADLINE_EXCEEDED (4)
  upstream broke the protocol (502 "protocol")          INTERNAL (13)
  no route for the path (404)                           UNIMPLEMENTED (12)
  request over limits.max_body (413)                    RESOURCE_EXHAUSTED (8)
  other 4xx / 5xx                                       as http-grpc-status-mapping
  ===================================================  =====================
"""

from __future__ import annotations

from collections.abc import Iterable

from splitproxy.config.grpc import SERVER_ERROR_STATUS, GrpcCode
from splitproxy.dataplane.stats import VersionStats

Headers = list[tuple[bytes, bytes]]

# grpc-timeout units (PROTOCOL-HTTP2.md: TimeoutValue is at most 8 ASCII digits).
_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6,
          ord("n"): 1e-9}

# http-grpc-status-mapping.md: the code a gRPC client derives from a non-200 HTTP status.
_FROM_HTTP = {400: GrpcCode.INTERNAL, 401: GrpcCode.UNAUTHENTICATED,
              403: GrpcCode.PERMISSION_DENIED, 404: GrpcCode.UNIMPLEMENTED,
              429: GrpcCode.UNAVAILABLE, 502: GrpcCode.UNAVAILABLE, 503: GrpcCode.UNAVAILABLE,
              504: GrpcCode.UNAVAILABLE}

# The proxy's own failures, by the error kind it counts them under (`stats.ERROR_KINDS`).
_FROM_KIND = {"connect": GrpcCode.UNAVAILABLE, "tls": GrpcCode.UNAVAILABLE,
              "reset": GrpcCode.UNAVAILABLE, "timeout": GrpcCode.DEADLINE_EXCEEDED,
              "protocol": GrpcCode.INTERNAL, "overload": GrpcCode.UNAVAILABLE,
              "resource": GrpcCode.UNAVAILABLE}

_SAFE = frozenset(range(0x20, 0x7F)) - {ord("%")}


def is_grpc(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """A gRPC request or response: `content-type: application/grpc`, `application/grpc+proto`
    and the like (gRPC-Web, whose trailers travel in the body, is not)."""
    for name, value in headers:
        if name == b"content-type":
            ct = value.lower()
            return ct == b"application/grpc" or ct.startswith((b"application/grpc+",
                                                               b"application/grpc;"))
    return False


def parse_timeout(value: bytes) -> float | None:
    """`grpc-timeout` in seconds; None when it is malformed (ignored, as grpc-go does not
    fail a call over it: the proxy's own timeouts still apply)."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def call_timeout(headers: Iterable[tuple[bytes, bytes]]) -> float | None:
    """The request's `grpc-timeout` in seconds, if it has a valid one."""
    for name, value in headers:
        if name == b"grpc-timeout":
            return parse_timeout(value)
    return None


def deadline(now: float, headers: Iterable[tuple[bytes, bytes]]) -> float:
    """The loop time the call must end by (its `grpc-timeout` from `now`); 0.0 for none.
    Hand it to `H2Pool.open_stream(deadline=...)`: the response-head timeout is then
    min(timeouts.response_header, grpc-timeout) and the whole call is bounded by it."""
    timeout = call_timeout(headers)
    return 0.0 if timeout is None else now + timeout


def encode_timeout(seconds: float) -> bytes:
    """`seconds` as a `grpc-timeout` value, rounded down in the finest unit whose 8 digits
    hold it (a deadline passed on is never later than the one received)."""
    for unit, scale in ((b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60)):
        value = int(seconds * scale)
        if value <= 99_999_999:
            return b"%d" % value + unit
    return b"99999999H"


def reduce_timeout(headers: Headers, remaining: float) -> None:
    """Replace the request's `grpc-timeout` by the time left of the call (`remaining`
    seconds): the upstream's deadline is the client's, less what the proxy took."""
    for i, (name, _) in enumerate(headers):
        if name == b"grpc-timeout":
            headers[i] = (name, encode_timeout(remaining))
            return


def _header(headers: Iterable[tuple[bytes, bytes]] | None, name: bytes) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None


def grpc_status(http_status: int, headers: Headers,
                trailers: Headers | None) -> int:
    """The call's gRPC status (see the module docstring)."""
    if http_status != 200:
        return int(_FROM_HTTP.get(http_status, GrpcCode.UNKNOWN))
    raw = _header(trailers, b"grpc-status")
    if raw is None:
        raw = _header(headers, b"grpc-status")  # trailers-only
    if raw is None or not raw.isdigit():
        return int(GrpcCode.INTERNAL)
    return int(raw)


def counted_status(http_status: int, code: int, error_codes: frozenset[int]) -> int:
    """The status a gRPC answer is counted under (see the module docstring)."""
    if http_status != 200 or code not in error_codes:
        return http_status
    try:
        return SERVER_ERROR_STATUS.get(GrpcCode(code), 500)
    except ValueError:  # a code past 16: the server's own extension, an error if listed
        return 500


def record(stats: VersionStats, http_status: int, code: int, error_codes: frozenset[int],
           seconds: float, upstream: float = -1.0) -> int:
    """Count one answered gRPC call (as `VersionStats.observe`); returns the status counted.
    `error_codes`: the route's (`RouteEntry.grpc_error_codes`)."""
    status = counted_status(http_status, code, error_codes)
    stats.observe(status, seconds, upstream)
    return status


def failure_code(kind: str, http_status: int) -> GrpcCode:
    """The gRPC code of a call the proxy fails itself with `http_status` (what it would have
    answered an HTTP/1.1 client) for a failure of `kind` (see the module docstring)."""
    if http_status == 504 or kind == "timeout":
        return GrpcCode.DEADLINE_EXCEEDED
    if http_status == 413:
        return GrpcCode.RESOURCE_EXHAUSTED
    if (code := _FROM_KIND.get(kind)) is not None:
        return code
    return _FROM_HTTP.get(http_status, GrpcCode.UNKNOWN)


def percent_encode(message: str) -> bytes:
    """`grpc-message` encoding: UTF-8, then every byte outside 0x20-0x7E, and '%', as %XX."""
    return b"".join(bytes((b,)) if b in _SAFE else b"%%%02X" % b
                    for b in message.encode("utf-8"))


def percent_decode(value: bytes) -> str:
    """A `grpc-message` as text (a malformed escape is kept as it is, as gRPC does)."""
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i] == 0x25 and _hex(value[i + 1:i + 3]):
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(value[i])
            i += 1
    return out.decode("utf-8", "replace")


def _hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def error_headers(code: int, message: str, extra: Headers | None = None) -> Headers:
    """A trailers-only gRPC answer (one HEADERS frame with END_STREAM)."""
    headers: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                        (b"grpc-status", b"%d" % code)]
    if message:
        headers.append((b"grpc-message", percent_encode(message)))
    if extra:
        headers += extra
    return headers


def failure_headers(kind: str, http_status: int, message: str,
                    extra: Headers | None = None) -> Headers:
    """`error_headers` for a proxy failure of `kind` (its code by `failure_code`)."""
    return error_headers(int(failure_code(kind, http_status)), message, extra)
