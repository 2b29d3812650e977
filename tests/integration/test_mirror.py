"""Shadow traffic through a real proxy to real upstreams: the copy reaches the shadow marked,
the client always gets the primary's answer, the two answers are compared (status class,
headers and body with the listed parts ignored) and counted per route; a hanging shadow
costs the clients nothing and its copies are dropped; large bodies are never copied."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from splitproxy.config.models import Config
from splitproxy.dataplane.server import ProxyServer
from splitproxy.routing import table
from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import get, raw_client
from tests.support.rawupstream import RawRequest
from tests.support.shadowing import Reply, json_reply, serving
from tests.support.waiting import wait_until


def mirrored_route(primary: str, shadow: str, **mirror: Any) -> dict[str, Any]:
    r = route({"primary": primary, "shadow": shadow}, {"primary": 100, "shadow": 0})
    r["mirror"] = {"to": "shadow", **mirror}
    return r


def counts(srv: ProxyServer, name: str = "shop") -> dict[str, int]:
    return {result: n for (r, to, result), n in srv.stats.shadow.items()
            if r == name and to == "shadow"}


def total(srv: ProxyServer) -> int:
    return sum(counts(srv).values())


async def test_equal_answers_match_and_the_client_gets_the_primarys() -> None:
    compare = {"body": True, "ignore_headers": ["X-Served-By"],
               "ignore_json_fields": ["generated_at"]}
    async with serving(json_reply("primary")) as p, serving(json_reply("shadow")) as s:
        async with run_proxy(proxy_config([mirrored_route(p.url, s.url, compare=compare)])
                             ) as srv:
            answers = [await get(srv.port, f"/item/{i}") for i in range(5)]
            await wait_until(lambda: total(srv) == 5, what=lambda: f"counts {counts(srv)}")
    assert counts(srv) == {"match": 5}
    assert all(a.status == 200 and a.header("x-served-by") == "primary" for a in answers)
    assert [r.target for r in s.requests] == [f"/item/{i}" for i in range(5)]
    assert all(r.header("x-splitproxy-shadow") == "1" for r in s.requests)
    assert all(r.header("x-splitproxy-shadow") is None for r in p.requests)
    # Only the copy goes to the shadow: the primary answered every request itself.
    assert len(p.requests) == 5


async def test_a_shadow_differing_in_status_is_a_mismatch_the_client_never_sees() -> None:
    async with serving(json_reply("primary")) as p, \
            serving(json_reply("primary", status=500)) as s:
        async with run_proxy(proxy_config([mirrored_route(p.url, s.url)])) as srv:
            answers = [await get(srv.port, "/") for _ in range(4)]
            await wait_until(lambda: total(srv) == 4, what=lambda: f"counts {counts(srv)}")
    assert counts(srv) == {"mismatch": 4}
    assert [a.status for a in answers] == [200] * 4


async def test_a_body_difference_is_a_mismatch_only_when_bodies_are_compared() -> None:
    async with serving(json_reply("x", price=10)) as p, \
            serving(json_reply("x", price=11)) as s:
        async with run_proxy(proxy_config([
            mirrored_route(p.url, s.url, compare={"body": True}),
            {**mirrored_route(p.url, s.url), "name": "status-only",
             "match": {"path_prefix": "/status-only"}},
        ][::-1])) as srv:
            a = await get(srv.port, "/a")
            await get(srv.port, "/status-only/a")
            await wait_until(lambda: len(srv.stats.shadow) == 2,
                             what=lambda: f"counts {srv.stats.shadow}")
    assert counts(srv) == {"mismatch": 1}
    assert counts(srv, "status-only") == {"match": 1}
    assert json.loads(a.body)["price"] == 10


async def test_json_fields_are_ignored_nested_and_in_lists() -> None:
    def reply(who: str) -> Reply:
        def answer(req: RawRequest) -> tuple[int, bytes, bytes]:
            doc = {"items": [{"id": 1, "etag": who}], "meta": {"at": who, "n": 1}}
            return 200, json.dumps(doc).encode(), b""
        return answer

    compare = {"body": True, "ignore_json_fields": ["items.etag", "meta.at"]}
    async with serving(reply("p")) as p, serving(reply("s")) as s:
        async with run_proxy(proxy_config([mirrored_route(p.url, s.url, compare=compare)])
                             ) as srv:
            await get(srv.port, "/")
            await wait_until(lambda: total(srv) == 1)
    assert counts(srv) == {"match": 1}


async def test_a_hanging_shadow_adds_no_latency_and_its_copies_are_dropped() -> None:
    """The same primary, through a mirrored route and a plain one, in the same proxy: while
    the shadow holds every copy it gets unanswered, the clients' answers come as fast."""
    n = 20
    async with serving(json_reply("primary")) as p, serving(None) as s:
        plain = {**route({"primary": p.url}), "name": "plain",
                 "match": {"path_prefix": "/plain"}}
        cfg = proxy_config([plain, mirrored_route(p.url, s.url, timeout="3s",
                                                  max_in_flight=4)])
        async with run_proxy(cfg) as srv:
            loop = asyncio.get_running_loop()

            async def timed(target: str) -> float:
                start = loop.time()
                resp = await get(srv.port, target)
                assert resp.status == 200
                return loop.time() - start

            with_shadow = [await timed("/m") for _ in range(n)]
            without = [await timed("/plain") for _ in range(n)]
            # Every client was served while four copies were still held by the shadow (the
            # other sixteen were dropped at once: the bound).
            assert counts(srv) == {"dropped": n - 4}
            assert srv.runtime.routes[1].mirror.in_flight == 4  # type: ignore[union-attr]
            await wait_until(lambda: counts(srv).get("dropped", 0) == n, timeout=10,
                             what=lambda: f"counts {counts(srv)}")
    with_shadow.sort()
    without.sort()
    print(f"client latency median with a hanging shadow {with_shadow[n // 2] * 1000:.2f} ms, "
          f"without {without[n // 2] * 1000:.2f} ms; max {with_shadow[-1] * 1000:.2f} / "
          f"{without[-1] * 1000:.2f} ms")
    # Had any client waited for its copy, it would have waited the copy's 3 s timeout.
    assert with_shadow[-1] < 3.0
    assert counts(srv) == {"dropped": n}
    # Four copies at a time at most: the bound held, the rest were dropped without a try.
    assert len(s.requests) == 4


async def test_bodies_over_max_body_are_never_mirrored() -> None:
    async with serving(json_reply("p")) as p, serving(json_reply("p")) as s:
        cfg = proxy_config([mirrored_route(p.url, s.url, methods=["POST"], max_body=64)])
        async with run_proxy(cfg) as srv:
            big = await get(srv.port, "/", method="POST", body=b"B" * 65)
            small = await get(srv.port, "/", method="POST", body=b"small")
            await wait_until(lambda: total(srv) == 1)
            again = await get(srv.port, "/", method="POST", body=b"s" * 64)
            await wait_until(lambda: total(srv) == 2)
            unlisted = await get(srv.port, "/")  # GET is not among the methods
    assert [r.status for r in (big, small, again, unlisted)] == [200] * 4
    assert [r.body for r in s.requests] == [b"small", b"s" * 64]
    assert [r.body for r in p.requests] == [b"B" * 65, b"small", b"s" * 64, b""]
    assert counts(srv) == {"match": 2}


async def test_percent_mirrors_that_share_of_requests() -> None:
    async with serving(json_reply("p")) as p, serving(json_reply("p")) as s:
        async with run_proxy(proxy_config([mirrored_route(p.url, s.url, percent=25)])) as srv:
            for _ in range(20):
                await get(srv.port, "/")
            await wait_until(lambda: total(srv) == 5)
    assert len(s.requests) == 5


async def test_a_shadow_that_refuses_connections_is_an_error_not_the_clients() -> None:
    # Bound and never listening, held for the whole test: connections to it are refused
    # (a port merely closed could be taken by the primary's upstream meanwhile).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{held.getsockname()[1]}"
        async with serving(json_reply("p")) as p, \
                run_proxy(proxy_config([mirrored_route(p.url, dead)])) as srv:
            resp = await get(srv.port, "/")
            await wait_until(lambda: total(srv) == 1)
    assert resp.status == 200
    assert counts(srv) == {"error": 1}


async def test_under_concurrent_load_a_hanging_shadow_costs_clients_nothing() -> None:
    """Eight keep-alive clients at once, each alternating a mirrored and a plain request to
    the same primary, while the shadow answers nothing: every answer is the primary's, none
    waits for a copy, and every copy is counted dropped."""
    clients, rounds = 8, 25
    async with serving(json_reply("primary")) as p, serving(None) as s:
        plain = {**route({"primary": p.url}), "name": "plain",
                 "match": {"path_prefix": "/plain"}}
        cfg = proxy_config([plain, mirrored_route(p.url, s.url, timeout="3s",
                                                  max_in_flight=16)])
        async with run_proxy(cfg) as srv:
            loop = asyncio.get_running_loop()
            mirrored_ms: list[float] = []
            plain_ms: list[float] = []

            async def client() -> None:
                async with raw_client(srv.port) as c:
                    for _ in range(rounds):
                        for target, into in (("/m", mirrored_ms), ("/plain", plain_ms)):
                            start = loop.time()
                            resp = await c.request("GET", target)
                            into.append((loop.time() - start) * 1000)
                            assert resp.status == 200
                            assert resp.header("x-served-by") == "primary"

            await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), 10)
            n = clients * rounds
            # All served while sixteen copies were still held by the shadow.
            assert counts(srv) == {"dropped": n - 16}
            await wait_until(lambda: counts(srv).get("dropped", 0) == n, timeout=10,
                             what=lambda: f"counts {counts(srv)}")
    mirrored_ms.sort()
    plain_ms.sort()
    print(f"{clients} clients: p50/p99/max with a hanging shadow "
          f"{mirrored_ms[n // 2]:.2f}/{mirrored_ms[n * 99 // 100]:.2f}/{mirrored_ms[-1]:.2f} ms"
          f", plain {plain_ms[n // 2]:.2f}/{plain_ms[n * 99 // 100]:.2f}/{plain_ms[-1]:.2f} ms")
    assert mirrored_ms[-1] < 3000  # none waited the copy's timeout
    assert len(s.requests) == 16
    assert len(p.requests) == 2 * n


async def test_requests_the_shadow_version_answers_itself_are_not_copied() -> None:
    async with serving(json_reply("p")) as p, serving(json_reply("s")) as s:
        r = route({"primary": p.url, "shadow": s.url}, {"primary": 1, "shadow": 1})
        r["mirror"] = {"to": "shadow"}
        async with run_proxy(proxy_config([r])) as srv:
            answers = [await get(srv.port, "/") for _ in range(10)]
            await wait_until(lambda: total(srv) == 5)
    assert sorted(a.header("x-served-by") or "" for a in answers) == ["p"] * 5 + ["s"] * 5
    # Ten requests reached the shadow version: five as the primary, five as copies.
    assert sorted(r.header("x-splitproxy-shadow") or "" for r in s.requests) == \
        [""] * 5 + ["1"] * 5


async def test_a_client_cannot_pass_for_shadow_traffic() -> None:
    """A client's own `X-Splitproxy-Shadow` is removed: the primary never sees one, the copy
    carries the proxy's marker once; on a route without a mirror it is removed as well."""
    forged = [("X-Splitproxy-Shadow", "1"), ("x-splitproxy-shadow", "forged")]
    async with serving(json_reply("p")) as p, serving(json_reply("s")) as s, \
            serving(json_reply("plain")) as plain:
        plain_route = route({"v1": plain.url}, {"v1": 100})
        plain_route.update(name="plain", match={"path_prefix": "/plain"})
        async with run_proxy(proxy_config([plain_route, mirrored_route(p.url, s.url)])
                             ) as srv:
            for target in ("/", "/plain/x"):
                assert (await get(srv.port, target, headers=forged)).status == 200
            await wait_until(lambda: total(srv) == 1, what=lambda: f"counts {counts(srv)}")
    assert [r.header("x-splitproxy-shadow") for r in p.requests] == [None]
    assert [r.header("x-splitproxy-shadow") for r in plain.requests] == [None]
    (copy,) = s.requests
    assert [v for k, v in copy.headers if k.lower() == "x-splitproxy-shadow"] == ["1"]


async def one_by_one(srv: ProxyServer, n: int) -> None:
    """`n` requests, each sent once the copy of the one before was compared."""
    for i in range(n):
        await get(srv.port, f"/{i}")
        await wait_until(lambda: total(srv) == i + 1)  # noqa: B023 -- awaited at once


async def test_copies_reuse_their_own_kept_alive_connection() -> None:
    """Sequential copies to a keep-alive shadow go over one connection of the mirror's own;
    the proxy's stop closes it."""
    async with serving(json_reply("p")) as p, serving(json_reply("p")) as s:
        async with run_proxy(proxy_config([mirrored_route(p.url, s.url)])) as srv:
            await one_by_one(srv, 10)
            (route,) = srv.runtime.routes
            shadow = route.mirror
            assert shadow is not None and sum(len(c) for c in shadow.idle.values()) == 1
        assert shadow.closed and not shadow.idle
    assert counts(srv) == {"match": 10}
    assert (len(s.requests), s.connections) == (10, 1)


async def test_a_kept_connection_the_shadow_closed_is_replaced_not_an_error() -> None:
    """A shadow that closes a kept-alive connection as the next copy arrives on it, without
    answering (its keep-alive timeout passed just then): the copy is sent again on a new
    connection, as any HTTP client does, reaches it and is compared."""
    async with serving(json_reply("p")) as p, \
            serving(json_reply("p"), one_per_connection=True) as s:
        async with run_proxy(proxy_config([mirrored_route(p.url, s.url)])) as srv:
            await one_by_one(srv, 10)
    assert counts(srv) == {"match": 10}
    assert (len(s.requests), s.connections) == (10, 10)


async def test_a_changed_mirror_closes_the_old_ones_connections() -> None:
    async with serving(json_reply("p")) as p, serving(json_reply("p")) as s:
        config = proxy_config([mirrored_route(p.url, s.url)])
        async with run_proxy(config) as srv:
            await get(srv.port, "/")
            await wait_until(lambda: total(srv) == 1)
            (route,) = srv.runtime.routes
            old = route.mirror
            assert old is not None and old.idle
            # A rollout step (or a reload) that changes the mirror: a new routing table.
            changed = Config.model_validate(proxy_config([mirrored_route(p.url, s.url,
                                                                         percent=50)]))
            srv.install(table.build(changed, 2))
            assert old.closed and not old.idle
            assert srv.runtime.routes[0].mirror is not old
