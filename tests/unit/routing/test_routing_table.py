"""routing/table.py: config + rollout state -> the immutable table the data plane swaps in.
Table-driven, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from splitproxy.config.models import Config
from splitproxy.routing import table
from splitproxy.routing.table import NO_RUN, Endpoint, RouteEntry, RoutingTable

TWO = {"stable": {"endpoints": ["http://127.0.0.1:9001", "http://10.0.0.2:8080"]},
       "canary": {"endpoints": ["http://canary.internal"]}}


def build(*routes: dict[str, Any], **kwargs: Any) -> RoutingTable:
    config = Config.model_validate({"routes": [
        {"name": f"r{i}", "versions": TWO, "weights": {"stable": 9, "canary": 1}, **r}
        for i, r in enumerate(routes)]})  # a route's own keys win over these defaults
    return table.build(config, **kwargs)


def one(route: dict[str, Any] | None = None, **kwargs: Any) -> RouteEntry:
    (entry,) = build(route or {}, **kwargs).routes
    return entry


@pytest.mark.parametrize(
    ("url", "host", "port", "key"),
    [
        ("http://127.0.0.1:9001", "127.0.0.1", 9001, "127.0.0.1:9001"),
        ("http://canary.internal", "canary.internal", 80, "canary.internal:80"),
        ("http://Shop.Internal:8080/", "shop.internal", 8080, "shop.internal:8080"),
    ],
)
def test_endpoints(url: str, host: str, port: int, key: str) -> None:
    (endpoint,) = one({"versions": {"stable": {"endpoints": [url]}},
                       "weights": {"stable": 1}}).endpoints["stable"]
    assert (endpoint.host, endpoint.port, endpoint.key) == (host, port, key)


def test_every_version_gets_its_endpoints_in_config_order() -> None:
    assert one().endpoints == {
        "stable": (Endpoint("127.0.0.1", 9001), Endpoint("10.0.0.2", 8080)),
        "canary": (Endpoint("canary.internal", 80),),
    }


@pytest.mark.parametrize(
    ("match", "host", "path", "matches"),
    [
        ({}, "", "/", True),
        ({}, "any.example", "/x", True),
        ({"host": "Shop.Example"}, "shop.example", "/", True),
        ({"host": "shop.example"}, "other.example", "/", False),
        ({"path_prefix": "/api/"}, "", "/api/items", True),
        ({"path_prefix": "/api/"}, "", "/apix", False),
        ({"host": "shop.example", "path_prefix": "/api"}, "shop.example", "/api", True),
        ({"host": "shop.example", "path_prefix": "/api"}, "shop.example", "/", False),
    ],
)
def test_matches(match: dict[str, str], host: str, path: str, matches: bool) -> None:
    assert one({"match": match}).matches(host, path) is matches


def test_routes_keep_config_order_and_the_generation() -> None:
    routing = build({"match": {"path_prefix": "/a"}}, {}, generation=9)
    assert routing.generation == 9
    assert [r.name for r in routing.routes] == ["r0", "r1"]


@pytest.mark.parametrize(
    ("route", "weights", "expected"),
    [
        ({}, None, (9, 1)),
        ({}, {"r0": {"stable": 50, "canary": 50}}, (50, 50)),
        ({}, {"r0": {"stable": 100}}, (100, 0)),  # a version left out has weight 0
        ({"strategy": "blue-green", "active": "canary", "weights": None}, None, (0, 100)),
    ],
    ids=["configured", "a-rollout-s", "missing-is-zero", "blue-green-active"],
)
def test_weights(route: dict[str, Any], weights: dict[str, dict[str, int]] | None,
                 expected: tuple[int, ...]) -> None:
    entry = one(route, weights=weights)
    assert entry.plan.versions == ("stable", "canary")
    assert entry.plan.weights == expected


BLUE_GREEN = {"strategy": "blue-green", "active": "stable", "weights": None}


@pytest.mark.parametrize(
    ("route", "weights", "version", "header"),
    [
        ({}, None, None, None),
        ({**BLUE_GREEN, "preview_header": "X-Preview"}, None, "canary", b"x-preview"),
        ({**BLUE_GREEN, "preview_header": "X-Preview"}, {"r0": {"stable": 0, "canary": 100}},
         "stable", b"x-preview"),
        (BLUE_GREEN, None, "canary", None),  # no header: nobody reaches it
    ],
    ids=["canary", "blue-green", "after-a-switch", "no-preview-header"],
)
def test_the_preview_reaches_the_color_not_serving(
        route: dict[str, Any], weights: dict[str, dict[str, int]] | None, version: str | None,
        header: bytes | None) -> None:
    entry = one(route, weights=weights)
    assert (entry.preview_version, entry.preview_header) == (version, header)


@pytest.mark.parametrize(
    ("sticky", "pins"),
    [
        ({}, {}),
        ({"pin_header": "X-Version"}, {b"stable": "stable", b"canary": "canary"}),
        ({"pin_header": "X-Version", "pin_token": "0123456789abcdef"},
         {b"stable:0123456789abcdef": "stable", b"canary:0123456789abcdef": "canary"}),
    ],
)
def test_pins(sticky: dict[str, str], pins: dict[bytes, str]) -> None:
    entry = one({"sticky": sticky})
    assert entry.pins == pins
    assert entry.pin_header == (b"x-version" if sticky else None)


def test_header_names_are_lower_case_bytes_as_the_parser_hands_them_over() -> None:
    entry = one({"sticky": {"hash_header": "X-User-Id", "pin_header": "X-Pin"},
                 "analysis": {"synthetic_header": "X-Load-Test"}})
    assert (entry.hash_header, entry.pin_header, entry.synthetic_header) == (
        b"x-user-id", b"x-pin", b"x-load-test")


def test_a_synthetic_header_only_with_analysis() -> None:
    assert one().synthetic_header is None
    assert one({"analysis": {}}).synthetic_header == b"x-splitproxy-synthetic"


@pytest.mark.parametrize(
    ("runs", "run"),
    [(None, NO_RUN), ({"r0": "r5"}, "r5"), ({"other": "r5"}, NO_RUN)],
)
def test_sticky_cookie_values_name_the_version_and_the_run(
        runs: dict[str, str] | None, run: str) -> None:
    entry = one({"sticky": {"cookie": "sp"}}, runs=runs)
    assert entry.run == run
    assert entry.cookie == "sp"
    assert entry.cookie_values == {f"stable.{run}".encode(): "stable",
                                   f"canary.{run}".encode(): "canary"}


@pytest.mark.parametrize(("max_age", "seconds"), [("1h", 3600), ("1.5s", 2), ("0.2s", 1)])
def test_cookie_max_age_is_whole_seconds_at_least_one(max_age: str, seconds: int) -> None:
    assert one({"sticky": {"cookie": "sp", "cookie_max_age": max_age}}).cookie_max_age == seconds


@pytest.mark.parametrize(
    ("analysis", "limits"),
    [
        (None, ()),
        ({}, ()),
        ({"max_p99_ms": 200}, (0.2,)),
        ({"max_p50_ms": 50, "max_p90_ms": 200, "max_p99_ms": 200}, (0.05, 0.2)),
    ],
    ids=["no-analysis", "error-rate-only", "p99", "sorted-unique"],
)
def test_latency_limits_are_the_analysis_limits_in_seconds_ascending(
        analysis: dict[str, Any] | None, limits: tuple[float, ...]) -> None:
    assert one({"analysis": analysis} if analysis is not None else {}).latency_limits == limits


def test_each_route_of_a_table_has_its_own_request_counter() -> None:
    a, b = build({"match": {"path_prefix": "/a"}}, {}).routes
    assert [next(a.counter) for _ in range(3)] == [0, 1, 2]
    assert next(b.counter) == 0
