"""Which version answers, end to end: weights, pin header, hash header, sticky cookie, matching."""

from __future__ import annotations

from collections import Counter
from http.cookies import SimpleCookie

import pytest

from tests.support.configs import proxy_config, rollout_config, route
from tests.support.load import served_by
from tests.support.proxy import run_proxy
from tests.support.rawhttp import get, raw_client
from tests.support.upstream import run_upstream, run_upstreams

NO_COOKIE = {"pin_header": "X-Splitproxy-Version", "hash_header": "X-User-Id"}


async def test_ninety_ten_split_is_exact_over_200_requests() -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = rollout_config(ups, weights={"stable": 90, "canary": 10}, sticky=NO_COOKIE)
        async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
            seen = await served_by(c, 200)
        assert set(seen) <= {"stable", "canary"}
        assert 18 <= seen["canary"] <= 22, seen
        assert seen["stable"] + seen["canary"] == 200
        assert srv.stats.get("shop", "canary").responses.get(200) == seen["canary"]
        assert srv.stats.get("shop", "stable").responses.get(200) == seen["stable"]


async def test_three_way_split_follows_weights() -> None:
    async with run_upstreams("a", "b", "c") as ups:
        cfg = rollout_config(ups, weights={"a": 50, "b": 30, "c": 20}, sticky=NO_COOKIE)
        async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
            seen = await served_by(c, 100)
        assert 48 <= seen["a"] <= 52, seen
        assert 28 <= seen["b"] <= 32, seen
        assert 18 <= seen["c"] <= 22, seen


async def test_weight_zero_version_gets_no_unpinned_traffic() -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = rollout_config(ups, weights={"stable": 100, "canary": 0}, sticky=NO_COOKIE)
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as c:
                seen = await served_by(c, 50)
                for i in range(50):  # hashed traffic must not land there either
                    resp = await c.request("GET", "/", headers={"X-User-Id": f"user-{i}"})
                    seen[resp.header("x-served-by") or "?"] += 1
        assert seen == Counter(stable=100)
        assert ups["canary"].requests == 0


async def test_pin_header_reaches_a_weight_zero_version() -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = rollout_config(ups, weights={"stable": 100, "canary": 0}, sticky=NO_COOKIE)
        async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
            seen = await served_by(c, 10, headers={"X-Splitproxy-Version": "canary"})
            assert seen == Counter(canary=10)
            # the pin also beats the hash key
            seen = await served_by(
                c, 5, headers={"X-Splitproxy-Version": "canary", "X-User-Id": "u1"}
            )
            assert seen == Counter(canary=5)


async def test_same_user_id_always_gets_the_same_version() -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = rollout_config(ups, weights={"stable": 50, "canary": 50}, sticky=NO_COOKIE)
        async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
            for user in ("alice", "bob", "carol", "dave"):
                seen = await served_by(c, 50, headers={"X-User-Id": user})
                assert len(seen) == 1, (user, seen)


async def test_many_user_ids_split_roughly_by_weight() -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = rollout_config(ups, weights={"stable": 90, "canary": 10}, sticky=NO_COOKIE)
        async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
            seen: Counter[str] = Counter()
            for i in range(400):
                resp = await c.request("GET", "/", headers={"X-User-Id": f"user-{i}"})
                seen[resp.header("x-served-by") or "?"] += 1
        # 40 expected; a fixed hash of 400 ids lands well inside +-16 (about 2.7 sigma)
        assert 24 <= seen["canary"] <= 56, seen
        assert seen["stable"] + seen["canary"] == 400


def cookie_value(set_cookie: str, name: str) -> tuple[str, str]:
    """(value, path) of cookie `name` in one Set-Cookie header value."""
    jar: SimpleCookie = SimpleCookie()
    jar.load(set_cookie)
    morsel = jar[name]
    return morsel.value, morsel["path"]


async def test_sticky_cookie_is_set_and_keeps_the_version() -> None:
    sticky = {**NO_COOKIE, "cookie": "splitproxy-shop"}
    async with run_upstreams("stable", "canary") as ups:
        cfg = proxy_config(
            [route({n: u.url for n, u in ups.items()}, {"stable": 50, "canary": 50}, sticky=sticky)]
        )
        async with run_proxy(cfg) as srv:
            given: Counter[str] = Counter()
            for _ in range(4):  # 50/50: both versions show up among the first few clients
                resp = await get(srv.port, "/")
                cookies = [v for v in resp.header_all("set-cookie") if "splitproxy-shop=" in v]
                assert len(cookies) == 1, resp.headers
                value, path = cookie_value(cookies[0], "splitproxy-shop")
                version, _, run = value.rpartition(".")  # the version and the rollout run
                assert version == resp.header("x-served-by")
                assert run == "0"  # no rollout state behind this proxy: run "0"
                assert path == "/"
                assert "Max-Age=86400" in cookies[0]
                given[version] += 1
            assert set(given) == {"stable", "canary"}, given

            async with raw_client(srv.port) as c:
                for version in ("canary", "stable"):
                    seen = await served_by(c, 20,
                                           headers={"Cookie": f"splitproxy-shop={version}.0"})
                    assert seen == Counter({version: 20})
                # other cookies around it do not confuse the lookup
                cookie = "a=1; splitproxy-shop=canary.0; b=2"
                seen = await served_by(c, 10, headers={"Cookie": cookie})
                assert seen == Counter(canary=10)


async def test_sticky_cookie_for_a_weight_zero_version_is_ignored() -> None:
    sticky = {**NO_COOKIE, "cookie": "splitproxy-shop"}
    async with run_upstreams("stable", "canary") as ups:
        cfg = proxy_config(
            [route({n: u.url for n, u in ups.items()}, {"stable": 100, "canary": 0}, sticky=sticky)]
        )
        async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
            seen = await served_by(c, 20, headers={"Cookie": "splitproxy-shop=canary.0"})
        assert seen == Counter(stable=20)
        assert ups["canary"].requests == 0


async def test_routes_match_by_host_and_path_prefix_first_match_wins() -> None:
    async with run_upstreams("a", "b", "c", "d") as ups:
        routes = [
            route({"v": ups["a"].url}, name="a", match={"host": "a.example.com"}),
            route(
                {"v": ups["b"].url},
                name="b",
                match={"host": "b.example.com", "path_prefix": "/api"},
            ),
            route({"v": ups["c"].url}, name="c", match={"path_prefix": "/api"}),
            route({"v": ups["d"].url}, name="d", match={"host": "b.example.com"}),
            # never reached: route "a" already takes every path of a.example.com
            route(
                {"v": ups["d"].url},
                name="shadowed",
                match={"host": "a.example.com", "path_prefix": "/x"},
            ),
        ]
        async with run_proxy(proxy_config(routes)) as srv, raw_client(srv.port) as c:
            cases = [
                ("a.example.com", "/", "a"),
                ("A.Example.COM:8080", "/x/y", "a"),  # case-insensitive, port ignored
                ("b.example.com", "/api/users", "b"),
                ("b.example.com:443", "/api", "b"),
                ("b.example.com", "/other", "d"),
                ("elsewhere.example.com", "/api/v1", "c"),
            ]
            for host, path, expected in cases:
                resp = await c.request("GET", path, host=host)
                assert resp.status == 200, (host, path, resp.status)
                assert resp.header("x-served-by") == expected, (host, path)
            resp = await c.request("GET", "/nothing-here", host="elsewhere.example.com")
        assert resp.status == 404
        assert (resp.header("content-type") or "").startswith("text/plain")
        assert resp.body
        assert srv.stats.get("shadowed", "v").requests == 0


TOKEN = "0123456789abcdef0123"


@pytest.mark.parametrize(
    ("sticky", "pin", "expected"),
    [
        ({}, "canary", "stable"),  # off unless configured: the header is just a header
        ({"pin_header": "X-Pin"}, "canary", "canary"),
        ({"pin_header": "X-Pin", "pin_token": TOKEN}, "canary", "stable"),  # token required
        ({"pin_header": "X-Pin", "pin_token": TOKEN}, f"canary:{TOKEN}", "canary"),
        ({"pin_header": "X-Pin", "pin_token": TOKEN}, f"canary:{TOKEN[:-1]}x", "stable"),
        ({"pin_header": "X-Pin", "pin_token": TOKEN}, f"canary:{TOKEN}x", "stable"),
        ({"pin_header": "X-Pin", "pin_token": TOKEN}, f"nope:{TOKEN}", "stable"),
    ],
)
async def test_the_pin_header_is_opt_in_and_may_require_a_token(
    sticky: dict[str, str], pin: str, expected: str
) -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = proxy_config([route({n: u.url for n, u in ups.items()},
                                  {"stable": 100, "canary": 0}, sticky=sticky)])
        async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
            headers = {"X-Pin": pin, "X-Splitproxy-Version": pin}
            assert await served_by(c, 5, headers=headers) == Counter({expected: 5})


@pytest.mark.parametrize(
    ("token", "value", "expected"),
    [(None, "1", "green"), (TOKEN, "1", "blue"), (TOKEN, TOKEN, "green")],
)
async def test_the_preview_header_is_opt_in_and_honours_the_pin_token(
    token: str | None, value: str, expected: str
) -> None:
    async with run_upstreams("blue", "green") as ups:
        r = route({n: u.url for n, u in ups.items()},
                  sticky={"pin_token": token} if token else {})
        del r["weights"]
        r.update(strategy="blue-green", active="blue")
        plain = proxy_config([r])
        r = dict(r, preview_header="X-Preview")
        async with run_proxy(plain) as srv, raw_client(srv.port) as c:
            assert await served_by(c, 3, headers={"X-Splitproxy-Preview": "1"}) == Counter(
                blue=3)
        async with run_proxy(proxy_config([r])) as srv, raw_client(srv.port) as c:
            assert await served_by(c, 3, headers={"X-Preview": value}) == Counter(
                {expected: 3})


async def test_a_new_table_with_the_same_endpoints_keeps_the_round_robin_going() -> None:
    """A rebuild (a reload, a rollout tick) must not restart the rotation at every swap."""
    async with run_upstream("a") as a, run_upstream("b") as b:
        async with run_proxy(proxy_config([route({"stable": [a.url, b.url]})])) as srv:
            seen = []
            async with raw_client(srv.port) as c:
                for _ in range(6):
                    seen.append((await c.request("GET", "/")).header("x-served-by"))
                    srv.install(srv.runtime.table)  # the same table again, after each request
    assert seen in (["a", "b"] * 3, ["b", "a"] * 3), seen
