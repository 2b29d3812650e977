"""The access log (`logging.access_log: true`): one line per request on `splitproxy.access`
with every field, checked against what a real client sent and received through a real proxy
in front of real upstreams; off by default, and then the connection is a plain one."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from typing import Any

import pytest

from splitproxy.dataplane.http.accesslog import LoggedDownstream
from splitproxy.dataplane.http.downstream import DownstreamProtocol
from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import build_request, parse_response_bytes, raw_client
from tests.support.rawupstream import RawRequest, read_request, run_raw_upstream
from tests.support.upstream import run_upstream
from tests.support.waiting import wait_until

ACCESS = "splitproxy.access"
LOGGING = {"access_log": True}


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    access: dict[str, Any] = record.__dict__["access"]
    return access


def logfmt(message: str) -> dict[str, str]:
    """The text line parsed back: key=value or key="quoted \\" value"."""
    out = {}
    for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', message):
        value = m[2]
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out[m[1]] = value
    return out


async def exchange(port: int, request: bytes) -> bytes:
    """Send one request with `Connection: close`; everything the proxy answered."""
    async with raw_client(port) as c:
        await c.send(request)
        return await c.read_until_close()


async def test_a_line_has_every_field_and_its_numbers_match_the_wire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], logging=LOGGING)
        async with run_proxy(cfg) as srv:
            body = b"x" * 1234
            request = build_request("POST", "/echo?token=secret", {
                "Connection": "close", "X-Request-Id": "Root=1-42"}, body)
            answer = await exchange(srv.port, request)
            assert parse_response_bytes(answer).status == 200

    [record] = lines(caplog)
    f = fields(record)
    assert f["route"] == "shop" and f["version"] == "stable"
    assert f["method"] == "POST"
    assert f["path"] == "/echo"  # the query string is left out: it often carries tokens
    assert f["status"] == 200
    assert f["upstream"] == f"127.0.0.1:{up.port}"
    assert f["sent"] == len(answer)  # every byte the client got, head and body
    assert f["received"] == len(request)  # request line, headers and body
    assert f["request_id"] == "Root=1-42"
    assert f["client"] == "127.0.0.1"
    assert f["end"] == "done"
    assert 0 < f["duration_ms"] < 10_000
    assert record.levelno == logging.INFO
    # The text line says the same, in logfmt.
    assert logfmt(record.getMessage()) == {k: str(v) for k, v in f.items()}
    assert "secret" not in record.getMessage()
    assert ' request_id="Root=1-42" ' in record.getMessage()  # `=` in a value: quoted


async def test_a_generated_request_id_is_the_one_logged_and_returned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], logging=LOGGING)
        async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
            resp = await c.request("GET", "/headers")
            seen = {k.lower(): v for k, v in resp.json()["headers"]}
    [record] = lines(caplog)
    rid = fields(record)["request_id"]
    assert rid == resp.header("x-request-id") == seen["x-request-id"]


async def test_every_request_of_a_keep_alive_connection_gets_its_own_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], logging=LOGGING)
        async with run_proxy(cfg) as srv, raw_client(srv.port) as c:
            sizes = []
            for target in ("/a", "/bb", "/status/204"):
                req = build_request("GET", target)
                await c.send(req)
                resp = await c.read_response()
                sizes.append(len(req))
                assert resp.status in (200, 204)
            # Pipelined: both sent at once, answered in order, logged in order.
            await c.send(build_request("GET", "/p1") + build_request("GET", "/p2"))
            await c.read_response()
            await c.read_response()
    records = [fields(r) for r in lines(caplog)]
    assert [r["path"] for r in records] == ["/a", "/bb", "/status/204", "/p1", "/p2"]
    assert [r["status"] for r in records] == [200, 200, 204, 200, 200]
    assert [r["received"] for r in records[:3]] == sizes
    assert len({r["request_id"] for r in records}) == 5


async def test_answers_the_proxy_makes_itself_are_logged(
    caplog: pytest.LogCaptureFixture, refused_port: Any
) -> None:
    dead = f"http://127.0.0.1:{refused_port()}"
    cfg = proxy_config([route({"stable": dead}, match={"path_prefix": "/shop"})],
                       logging=LOGGING)
    async with run_proxy(cfg) as srv:
        no_route = await exchange(srv.port, build_request("GET", "/other",
                                                          {"Connection": "close"}))
        refused = await exchange(srv.port, build_request("GET", "/shop/x",
                                                         {"Connection": "close"}))
        bad = await exchange(srv.port, b"GET /shop HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert parse_response_bytes(no_route).status == 404
    assert parse_response_bytes(refused).status == 502
    assert parse_response_bytes(bad).status == 400
    nf, rf, bd = (fields(r) for r in lines(caplog))
    assert (nf["route"], nf["version"], nf["status"], nf["upstream"]) == ("-", "-", 404, "-")
    assert nf["sent"] == len(no_route) and nf["path"] == "/other"
    assert (rf["route"], rf["version"], rf["status"]) == ("shop", "stable", 502)
    assert rf["upstream"] == dead.removeprefix("http://")  # the endpoint that refused
    assert rf["sent"] == len(refused)
    # Refused while its head was read: still one line, with the method and path it had.
    assert (bd["status"], bd["method"], bd["path"], bd["end"]) == (400, "GET", "/shop", "done")


async def test_an_answer_cut_by_the_upstream_is_logged_as_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"y" * 10)
        await writer.drain()

    async with run_raw_upstream(half) as up:
        cfg = proxy_config([route({"stable": up.url})], logging=LOGGING)
        async with run_proxy(cfg) as srv:
            got = await exchange(srv.port, build_request("GET", "/"))
    [record] = lines(caplog)
    f = fields(record)
    assert (f["status"], f["end"]) == (200, "cut")
    assert f["sent"] == len(got)  # the head and the 10 bytes that came


async def test_a_client_that_leaves_before_its_answer_is_logged_as_499(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], logging=LOGGING)
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as c:
                await c.send(build_request("GET", "/slow?delay=5"))
                await wait_until(lambda: up.in_flight == 1, what="the upstream call")
                # Gone for good (a reset), not a half-close, which still gets its answer.
                c.writer.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.writer.transport.abort()
            await wait_until(lambda: bool(lines(caplog)), what="the access log line")
    [record] = lines(caplog)
    f = fields(record)
    assert (f["status"], f["end"], f["sent"]) == (499, "client-closed", 0)
    assert f["path"] == "/slow"


async def test_paths_are_escaped_and_quoted_in_the_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], logging=LOGGING)
        async with run_proxy(cfg) as srv:
            await exchange(srv.port, build_request("GET", '/a"b=c\\d', {"Connection": "close"}))
            await exchange(srv.port, build_request("GET", "/" + "z" * 3000,
                                                   {"Connection": "close"}))
    quoted, long = lines(caplog)
    assert fields(quoted)["path"] == '/a"b=c\\d'
    assert ' path="/a\\"b=c\\\\d" ' in quoted.getMessage()
    assert logfmt(quoted.getMessage())["path"] == '/a"b=c\\d'
    assert fields(long)["path"] == "/" + "z" * 1023 + "..."


async def test_off_by_default_and_turned_on_by_a_reload_for_new_connections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})])
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as old:
                assert (await old.request("GET", "/before")).status == 200
                [conn] = srv.connections
                assert type(conn) is DownstreamProtocol
                on = type(srv.config).model_validate(proxy_config(
                    [route({"stable": up.url})], logging=LOGGING))
                srv.reconfigure(on, srv.runtime.table)
                # An open connection keeps what it was accepted with.
                assert (await old.request("GET", "/old-connection")).status == 200
                async with raw_client(srv.port) as new:
                    assert (await new.request("GET", "/new-connection")).status == 200
                    assert any(type(c) is LoggedDownstream for c in srv.connections)
    assert [fields(r)["path"] for r in lines(caplog)] == ["/new-connection"]


async def test_the_upstream_sees_what_the_log_says_it_received(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[RawRequest] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = await read_request(reader)
        assert req is not None
        seen.append(req)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with run_raw_upstream(answer) as up:
        cfg = proxy_config([route({"stable": up.url})], logging=LOGGING)
        async with run_proxy(cfg) as srv:
            await exchange(srv.port, build_request("PUT", "/up", {"Connection": "close"},
                                                   b"0123456789"))
    [record] = lines(caplog)
    assert fields(record)["method"] == "PUT"
    assert [r.body for r in seen] == [b"0123456789"]
