"""gRPC rules without sockets: grpc-timeout, status classification, the proxy's own errors."""

from __future__ import annotations

import pytest

from splitproxy.config.grpc import GrpcCode
from splitproxy.control.window import Sample
from splitproxy.dataplane.h2 import grpc as g
from splitproxy.dataplane.stats import VersionStats
from splitproxy.rollout.tally import ERRORS as ERRORS_SERIES
from splitproxy.rollout.tally import REQUESTS, series_of

ERRORS = frozenset({2, 4, 12, 13, 14, 15})


@pytest.mark.parametrize(("value", "seconds"), [
    (b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"250m", 0.25), (b"1500u", 0.0015),
    (b"1000000n", 0.001), (b"99999999S", 99999999.0), (b"0m", 0.0),
])
def test_grpc_timeout_units(value: bytes, seconds: float) -> None:
    assert g.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    b"", b"S", b"10", b"10s", b"10x", b"-1S", b"1.5S", b"123456789S", b" 1S", b"1 S",
])
def test_a_malformed_grpc_timeout_is_ignored(value: bytes) -> None:
    assert g.parse_timeout(value) is None


def test_the_deadline_is_now_plus_grpc_timeout_or_none() -> None:
    assert g.deadline(100.0, [(b"grpc-timeout", b"500m")]) == pytest.approx(100.5)
    assert g.deadline(100.0, [(b"content-type", b"application/grpc")]) == 0.0


@pytest.mark.parametrize(("content_type", "grpc"), [
    (b"application/grpc", True), (b"application/grpc+proto", True),
    (b"Application/GRPC;charset=utf-8", True), (b"application/grpc-web", False),
    (b"application/grpcx", False), (b"application/json", False),
])
def test_is_grpc(content_type: bytes, grpc: bool) -> None:
    assert g.is_grpc([(b"content-type", content_type)]) is grpc


def test_status_from_trailers_then_headers_then_http() -> None:
    head = [(b":status", b"200"), (b"grpc-status", b"5")]
    assert g.grpc_status(200, head, [(b"grpc-status", b"14")]) == 14
    assert g.grpc_status(200, head, None) == 5  # trailers-only
    assert g.grpc_status(200, [], [(b"x", b"y")]) == GrpcCode.INTERNAL  # none: as clients
    # Not 200: what a gRPC client makes of the HTTP status.
    assert g.grpc_status(503, [], None) == GrpcCode.UNAVAILABLE
    assert g.grpc_status(404, [], None) == GrpcCode.UNIMPLEMENTED
    assert g.grpc_status(500, [], None) == GrpcCode.UNKNOWN


@pytest.mark.parametrize(("code", "counted"), [
    (0, 200), (5, 200), (8, 200), (1, 200),  # OK, NOT_FOUND, RESOURCE_EXHAUSTED, CANCELLED
    (14, 503), (4, 504), (12, 501), (13, 500), (2, 500), (15, 500),
])
def test_configured_codes_count_as_their_5xx(code: int, counted: int) -> None:
    assert g.counted_status(200, code, ERRORS) == counted


def test_a_configured_code_without_a_5xx_counts_as_500() -> None:
    assert g.counted_status(200, 8, frozenset({8})) == 500
    assert g.counted_status(200, 99, frozenset({99})) == 500
    assert g.counted_status(502, 14, ERRORS) == 502  # an HTTP error stays what it was


@pytest.mark.parametrize(("kind", "status", "code"), [
    ("connect", 503, GrpcCode.UNAVAILABLE), ("connect", 502, GrpcCode.UNAVAILABLE),
    ("tls", 502, GrpcCode.UNAVAILABLE), ("reset", 502, GrpcCode.UNAVAILABLE),
    ("overload", 503, GrpcCode.UNAVAILABLE), ("timeout", 504, GrpcCode.DEADLINE_EXCEEDED),
    ("connect", 504, GrpcCode.DEADLINE_EXCEEDED), ("protocol", 502, GrpcCode.INTERNAL),
    ("route", 404, GrpcCode.UNIMPLEMENTED), ("limit", 413, GrpcCode.RESOURCE_EXHAUSTED),
    ("bad", 400, GrpcCode.INTERNAL), ("other", 418, GrpcCode.UNKNOWN),
])
def test_the_code_of_a_proxy_failure(kind: str, status: int, code: GrpcCode) -> None:
    assert g.failure_code(kind, status) == code


def test_a_trailers_only_error_answer() -> None:
    headers = g.failure_headers("connect", 503, "no healthy endpoint: 100% down\n",
                                [(b"x-request-id", b"abc")])
    assert headers == [(b":status", b"200"), (b"content-type", b"application/grpc"),
                       (b"grpc-status", b"14"),
                       (b"grpc-message", b"no healthy endpoint: 100%25 down%0A"),
                       (b"x-request-id", b"abc")]


@pytest.mark.parametrize("text", ["plain", "100% ü\r\n☃", "%zz", ""])
def test_grpc_message_round_trips(text: str) -> None:
    encoded = g.percent_encode(text)
    assert all(0x20 <= b < 0x7F for b in encoded)
    assert g.percent_decode(encoded) == text


def test_a_malformed_escape_is_kept() -> None:
    assert g.percent_decode(b"50%") == "50%"
    assert g.percent_decode(b"%4") == "%4"
    assert g.percent_decode(b"%41%zz") == "A%zz"


def test_the_guards_counts_see_a_configured_grpc_error_as_an_error() -> None:
    stats = VersionStats("svc", "canary")
    g.record(stats, 200, GrpcCode.OK, ERRORS, 0.01, 0.01)
    g.record(stats, 200, GrpcCode.NOT_FOUND, ERRORS, 0.01, 0.01)
    g.record(stats, 200, GrpcCode.UNAVAILABLE, ERRORS, 0.01, 0.01)
    sample = Sample.of(stats)
    assert (sample.requests, sample.errors) == (3, 1)
    series = series_of([stats], "svc", (), synthetic=False)
    assert (series[("canary", REQUESTS, "")], series[("canary", ERRORS_SERIES, "")]) == (3, 1)


@pytest.mark.parametrize(("seconds", "value"), [
    (4.9999996, b"4999999u"), (0.0000004, b"0u"), (150.0, b"150000m"),
    (200000.0, b"200000S"), (1e9, b"16666666M"),
])
def test_a_reduced_grpc_timeout_rounds_down_in_the_finest_unit(seconds: float,
                                                               value: bytes) -> None:
    assert g.encode_timeout(seconds) == value
    assert (g.parse_timeout(value) or 0.0) <= seconds


def test_reduce_timeout_replaces_only_grpc_timeout() -> None:
    headers = [(b":path", b"/x"), (b"grpc-timeout", b"5S"), (b"x", b"1")]
    g.reduce_timeout(headers, 4.5)
    assert headers == [(b":path", b"/x"), (b"grpc-timeout", b"4500000u"), (b"x", b"1")]
