"""`X-Request-Id` through a real proxy to a real upstream: a sane one from the client is
kept, a missing or insane one is made here; the upstream gets exactly one, the client gets the
same one back (on the proxy's own error answers too), whatever the upstream answers."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import get
from tests.support.rawupstream import read_request, run_raw_upstream
from tests.support.upstream import run_upstream


def sent_upstream(resp: Any) -> list[str]:
    """The X-Request-Id values the upstream's /headers saw."""
    return [v for k, v in resp.json()["headers"] if k.lower() == "x-request-id"]


async def test_made_when_absent_sent_upstream_and_returned() -> None:
    async with run_upstream("stable") as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            first = await get(srv.port, "/headers")
            second = await get(srv.port, "/headers")
    for resp in (first, second):
        [rid] = resp.header_all("x-request-id")
        assert sent_upstream(resp) == [rid]
        assert uuid.UUID(rid).version == 4  # shaped as a UUID, for systems that check
    assert first.header("x-request-id") != second.header("x-request-id")


@pytest.mark.parametrize("given", [
    "8f14e45f-ceea-467f-a0d7-6d0a1b6a5a11",
    "01HV6Q3M2Y3Z8K9X7W5T4R3P2N",  # a ULID
    "Root=1-5759e988-bd862e3fe1be46a994272793",  # a trace id with key=value
    "a" * 200,
])
async def test_a_sane_id_from_the_client_is_kept(given: str) -> None:
    async with run_upstream("stable") as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            resp = await get(srv.port, "/headers", headers={"X-Request-Id": given})
    assert sent_upstream(resp) == [given]
    assert resp.header_all("x-request-id") == [given]


@pytest.mark.parametrize("headers", [
    [("X-Request-Id", "a" * 201)],  # too long
    [("X-Request-Id", "two words")],
    [("X-Request-Id", 'quo"te')],
    [("X-Request-Id", "semi;colon")],
    [("X-Request-Id", "caf\xe9")],
    [("X-Request-Id", "")],
    [("X-Request-Id", "one"), ("X-Request-Id", "two")],  # which one? neither
], ids=["long", "space", "quote", "semicolon", "latin1", "empty", "twice"])
async def test_an_insane_id_is_replaced_and_never_reaches_the_upstream(
    headers: list[tuple[str, str]],
) -> None:
    async with run_upstream("stable") as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            resp = await get(srv.port, "/headers", headers=headers)
    [rid] = sent_upstream(resp)
    assert resp.header_all("x-request-id") == [rid]
    assert uuid.UUID(rid).version == 4
    assert all(rid != v for _, v in headers)


async def test_the_upstreams_own_id_does_not_reach_the_client() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            echoed = req.header("x-request-id") or "none"
            writer.write(b"HTTP/1.1 200 OK\r\nX-Request-Id: upstream-made\r\n"
                         b"X-Request-Id: " + echoed.encode() + b"\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with run_raw_upstream(answer) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            resp = await get(srv.port, "/", headers={"X-Request-Id": "from-client"})
    assert resp.status == 200
    assert resp.header_all("x-request-id") == ["from-client"]


async def test_the_proxys_own_answers_carry_it(refused_port: Any) -> None:
    dead = f"http://127.0.0.1:{refused_port()}"
    cfg = proxy_config([route({"stable": dead}, match={"path_prefix": "/shop"})],
                       limits={"max_body": 10})
    async with run_proxy(cfg) as srv:
        refused = await get(srv.port, "/shop", headers={"X-Request-Id": "r-502"})
        no_route = await get(srv.port, "/elsewhere", headers={"X-Request-Id": "r-404"})
        too_big = await get(srv.port, "/shop", method="POST", body=b"x" * 11,
                            headers={"X-Request-Id": "r-413"})
        made = await get(srv.port, "/shop")
    assert (refused.status, refused.header_all("x-request-id")) == (502, ["r-502"])
    assert (no_route.status, no_route.header_all("x-request-id")) == (404, ["r-404"])
    assert (too_big.status, too_big.header_all("x-request-id")) == (413, ["r-413"])
    assert made.status == 502
    assert uuid.UUID(made.header("x-request-id") or "").version == 4
