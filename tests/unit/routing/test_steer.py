"""Header/cookie routes of a step and weights in hundredths: pure routing, no sockets."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from splitproxy.config.headerroute import MAX_VALUE, HeaderRoute, regex_problem
from splitproxy.routing.choose import BUCKETS, RoutePlan, bucket, choose, make_plan
from splitproxy.routing.steer import compile_rules, steered

VERSIONS = ("stable", "canary")


def rules(**spec: str) -> tuple[HeaderRoute, ...]:
    return (HeaderRoute.model_validate(spec),)


def plan(stable: float, canary: float, steering: bool = True) -> RoutePlan:
    return make_plan("web", VERSIONS, {"stable": stable, "canary": canary}, "stable",
                     canary="canary" if steering else None)


@pytest.mark.parametrize(("spec", "headers", "expected"), [
    ({"header": "X-Tester", "value": "yes"}, {b"x-tester": b"yes"}, True),
    ({"header": "X-Tester", "value": "yes"}, {b"x-tester": b"yes "}, True),  # OWS trimmed
    ({"header": "X-Tester", "value": "yes"}, {b"x-tester": b"yesno"}, False),
    ({"header": "X-Tester", "value": "yes"}, {}, False),
    ({"header": "X-Tester", "match": "prefix", "value": "qa-"}, {b"x-tester": b"qa-7"}, True),
    ({"header": "X-Tester", "match": "prefix", "value": "qa-"}, {b"x-tester": b"dev-7"}, False),
    ({"header": "X-User", "match": "regex", "value": "tester-[0-9]+"},
     {b"x-user": b"tester-42"}, True),
    ({"header": "X-User", "match": "regex", "value": "tester-[0-9]+"},
     {b"x-user": b"tester-42x"}, False),  # fullmatch, not search
    ({"cookie": "canary", "value": "always"}, {b"cookie": b"a=1; canary=always"}, True),
    ({"cookie": "canary", "value": "always"}, {b"cookie": b"canary=never"}, False),
    ({"cookie": "canary", "value": "always"}, {b"x-canary": b"always"}, False),
])
def test_a_request_matches_a_header_route_by_its_kind(
        spec: dict[str, str], headers: dict[bytes, bytes], expected: bool) -> None:
    assert steered(compile_rules(rules(**spec)), headers) is expected


def test_a_regex_route_never_looks_past_the_value_bound() -> None:
    compiled = compile_rules(rules(header="X-User", match="regex", value="a[a-z]*"))
    assert steered(compiled, {b"x-user": b"a" * MAX_VALUE})
    assert not steered(compiled, {b"x-user": b"a" * (MAX_VALUE + 1)})


@pytest.mark.parametrize("pattern", [
    "(a+)+b", "(a|ab)*c", "(x){2,}", r"(\w)\1", "(?P<n>a)(?P=n)", "a*b*c*", "x" * 300, "(",
])
def test_regexes_that_could_backtrack_for_long_are_refused(pattern: str) -> None:
    assert regex_problem(pattern) is not None
    with pytest.raises(ValidationError):
        HeaderRoute(header="X", match="regex", value=pattern)


@pytest.mark.parametrize("pattern", ["tester-[0-9]+", ".*@example\\.com", "[(+*)]+x", r"\(a\)+"])
def test_ordinary_regexes_are_accepted(pattern: str) -> None:
    assert regex_problem(pattern) is None


def test_a_header_route_names_a_header_or_a_cookie() -> None:
    with pytest.raises(ValidationError, match="either `header` or `cookie`"):
        HeaderRoute(value="x")
    with pytest.raises(ValidationError, match="either `header` or `cookie`"):
        HeaderRoute(header="X", cookie="c", value="x")


def test_a_steered_request_goes_to_the_canary_at_weight_0() -> None:
    p = plan(100, 0)
    assert {choose(p, seq, None, None, None, True) for seq in range(50)} == {"canary"}
    assert {choose(p, seq, None, None, None, False) for seq in range(50)} == {"stable"}


def test_steering_comes_after_the_pin_and_before_cookie_and_hash() -> None:
    p = plan(50, 50)
    assert choose(p, 0, "stable", None, None, True) == "stable"  # the pin wins
    assert choose(p, 0, None, "stable", b"user-1", True) == "canary"  # cookie, hash lose


def test_steering_is_ignored_without_header_routes_in_the_plan() -> None:
    p = plan(100, 0, steering=False)
    assert choose(p, 0, None, None, None, True) == "stable"


def test_half_a_percent_is_exactly_100_in_20000_requests() -> None:
    p = plan(99.5, 0.5)
    picks = Counter(choose(p, seq, None, None, None) for seq in range(20_000))
    assert picks["canary"] == 100
    # Low variance, not only right on average: one canary request in every 200.
    assert all(sum(choose(p, s, None, None, None) == "canary" for s in range(start, start + 200))
               == 1 for start in range(0, 1000, 37))


@pytest.mark.parametrize(("canary", "buckets"), [(0.01, 1), (0.5, 50), (12.34, 1234), (10, 1000)])
def test_hash_buckets_honour_hundredths_exactly(canary: float, buckets: int) -> None:
    p = plan(round(100 - canary, 2), canary)
    owners = Counter(p.bucket_bounds[0][1] if b < p.bucket_bounds[0][0] else "stable"
                     for b in range(BUCKETS))
    assert owners["canary"] == buckets
    key = next(f"u{i}".encode() for i in range(100_000) if bucket("web", f"u{i}".encode()) == 0)
    assert choose(p, 0, None, None, key) == "canary"


def test_whole_weights_give_the_schedule_and_buckets_they_always_did() -> None:
    p = plan(90, 10)
    assert len(p.schedule) == 10 and p.schedule.count("canary") == 1
    assert p.bucket_bounds == ((1000, "canary"), (10_000, "stable"))
    assert p.weights == (90, 10)
