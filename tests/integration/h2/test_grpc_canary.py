"""gRPC canaries end to end: a real grpcio client, through the proxy (h2c downstream, HTTP/2
upstream), to real grpcio servers at 90/10; unary and streaming calls, trailers intact; a
canary that starts answering UNAVAILABLE is aborted by the guard, and the calls go on."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from tests.support.configs import proxy_config, rollout_config, route
from tests.support.proxy import run_proxy
from tests.support.service import admin, run_service, status, write_config
from tests.support.waiting import wait_until


class _Versioned(grpc.GenericRpcHandler):  # type: ignore[misc]
    """`/demo.Echo/Unary` answers `<name>:<request>`; `/demo.Echo/Stream` `n` parts; both
    abort with UNAVAILABLE while `failing` is set."""

    def __init__(self, name: str, failing: threading.Event) -> None:
        self.name = name.encode()
        self.failing = failing

    def service(self, details: Any) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        raw = {"request_deserializer": None, "response_serializer": None}

        def check(ctx: Any) -> None:
            if self.failing.is_set():
                ctx.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name.decode()} is down")

        if method == "Unary":
            def unary(req: bytes, ctx: Any) -> bytes:
                check(ctx)
                return self.name + b":" + req
            return grpc.unary_unary_rpc_method_handler(unary, **raw)
        if method == "Deadline":
            def deadline(req: bytes, ctx: Any) -> bytes:
                return b"%.6f" % ctx.time_remaining()
            return grpc.unary_unary_rpc_method_handler(deadline, **raw)
        if method == "Stream":
            def stream(req: bytes, ctx: Any) -> Iterator[bytes]:
                check(ctx)
                for i in range(int(req)):
                    yield self.name + b"-%d" % i
            return grpc.unary_stream_rpc_method_handler(stream, **raw)
        return None


@contextlib.contextmanager
def grpc_version(name: str) -> Iterator[tuple[str, threading.Event]]:
    """A grpcio server for version `name`: its URL, and the event that makes it fail."""
    failing = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((_Versioned(name, failing),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", failing
    finally:
        server.stop(0).wait(5)


def h2_route(urls: dict[str, str], weights: dict[str, int]) -> dict[str, Any]:
    r = route(urls, weights)
    for version in r["versions"].values():
        version["protocol"] = "h2"
    return r


def calls(port: int, n: int) -> list[tuple[str, bytes]]:
    """`n` unary calls on one channel (one HTTP/2 connection): (code name, answer)."""
    out = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary("/demo.Echo/Unary")
        for i in range(n):
            try:
                out.append(("OK", unary(b"%d" % i, timeout=10)))
            except grpc.RpcError as exc:
                out.append((exc.code().name, exc.details().encode()))
    return out


def stream_call(port: int, parts: int) -> list[bytes]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.unary_stream("/demo.Echo/Stream")
        return list(stream(b"%d" % parts, timeout=10))


async def test_grpc_unary_and_streaming_calls_split_90_10_and_counted() -> None:
    with grpc_version("stable") as (stable, _), grpc_version("canary") as (canary, _):
        cfg = proxy_config([h2_route({"stable": stable, "canary": canary},
                                     {"stable": 90, "canary": 10})])
        async with run_proxy(cfg) as srv:
            answers = await asyncio.to_thread(calls, srv.port, 100)
            parts = [await asyncio.to_thread(stream_call, srv.port, 5) for _ in range(10)]
    assert {code for code, _ in answers} == {"OK"}
    assert sum(a.startswith(b"canary:") for _, a in answers) == 10
    assert answers[0][1].split(b":")[1] == b"0"
    # Each streaming call is one stream: every part from the version that took it.
    assert sum(p[0].startswith(b"canary") for p in parts) == 1
    assert all(len(p) == 5 and len({x.split(b"-")[0] for x in p}) == 1 for p in parts)
    assert srv.stats.get("shop", "canary").responses == {200: 11}
    assert srv.stats.get("shop", "stable").responses == {200: 99}


async def test_an_unavailable_grpc_canary_is_counted_as_errors_and_answered_by_grpc() -> None:
    with grpc_version("stable") as (stable, _), grpc_version("canary") as (canary, failing):
        failing.set()
        cfg = proxy_config([h2_route({"stable": stable, "canary": canary},
                                     {"stable": 50, "canary": 50})])
        async with run_proxy(cfg) as srv:
            answers = await asyncio.to_thread(calls, srv.port, 10)
    codes = [code for code, _ in answers]
    assert codes.count("UNAVAILABLE") == 5 and codes.count("OK") == 5
    assert (b"canary is down") in {a for c, a in answers if c == "UNAVAILABLE"}
    # UNAVAILABLE is one of the default error codes: counted as its HTTP equivalent, 503.
    assert srv.stats.get("shop", "canary").responses == {503: 5}
    assert srv.stats.get("shop", "stable").responses == {200: 5}


async def test_a_proxy_failure_of_a_grpc_call_is_a_grpc_status() -> None:
    cfg = proxy_config([h2_route({"stable": "http://127.0.0.1:1"}, {"stable": 1})])
    async with run_proxy(cfg) as srv:
        [(code, detail)] = await asyncio.to_thread(calls, srv.port, 1)
    assert code == "UNAVAILABLE"


async def test_the_guard_aborts_a_grpc_canary_that_starts_failing(tmp_path: Path) -> None:
    with grpc_version("stable") as (stable, _), grpc_version("canary") as (canary, failing):
        cfg = rollout_config({"stable": stable, "canary": canary},
                             weights={"stable": 100, "canary": 0},
                             analysis={"interval": "0.25s", "max_error_rate": 0.01},
                             rollout={"steps": [{"set_weight": 10}, {"pause": {}}]})
        for version in cfg["routes"][0]["versions"].values():
            version["protocol"] = "h2"
        path = tmp_path / "shop.yaml"
        write_config(path, cfg)
        async with run_service(path, watch=False) as svc, admin(svc) as session:
            port = svc.proxy.port
            engine = svc.controller.engine
            await wait_until(lambda: engine.weights()["shop"]["canary"] == 10,
                             what="the first step")
            healthy = await asyncio.to_thread(calls, port, 50)
            failing.set()

            async def aborted() -> bool:
                await asyncio.to_thread(calls, port, 20)
                ro = (await status(session))["routes"][0]["rollout"]
                return bool(ro["phase"] == "aborted")

            await wait_until(aborted, timeout=30, what="the abort", interval=0.05)
            after = await asyncio.to_thread(calls, port, 20)
    assert {code for code, _ in healthy} == {"OK"}
    assert engine.weights()["shop"]["canary"] == 0
    assert {code for code, _ in after} == {"OK"}
    assert all(a.startswith(b"stable:") for _, a in after)


async def test_a_grpc_call_without_a_route_is_unimplemented() -> None:
    r = h2_route({"stable": "http://127.0.0.1:1"}, {"stable": 1})
    r["match"] = {"path_prefix": "/other.Service/"}
    async with run_proxy(proxy_config([r])) as srv:
        [(code, detail)] = await asyncio.to_thread(calls, srv.port, 1)
    assert code == "UNIMPLEMENTED"


async def test_a_grpc_call_is_never_downgraded_to_an_http1_version() -> None:
    with grpc_version("stable") as (stable, _):
        cfg = proxy_config([route({"stable": stable})])  # protocol left at http1
        async with run_proxy(cfg) as srv:
            [(code, detail)] = await asyncio.to_thread(calls, srv.port, 1)
    assert code == "UNAVAILABLE"
    assert srv.stats.get("shop", "stable").responses == {502: 1}


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose connects time out: a listener with its backlog full, never accepting."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in (*fillers, listener):
            sock.close()


async def test_a_grpcio_server_gets_the_callers_deadline_less_the_proxys_time() -> None:
    """The call first meets an endpoint whose connect times out (500 ms), then reaches the
    grpcio server: the deadline the server sees is the caller's 5 s less that time."""
    def call(port: int) -> float:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            return float(channel.unary_unary("/demo.Echo/Deadline")(b"", timeout=5))

    with grpc_version("stable") as (stable, _), unanswered_port() as dead:
        # Round robin starts at the second endpoint: the unanswered one is tried first.
        r = h2_route({"stable": stable}, {"stable": 1})
        r["versions"]["stable"]["endpoints"].append(f"http://127.0.0.1:{dead}")
        cfg = proxy_config([r])
        cfg["timeouts"]["connect"] = "500ms"
        async with run_proxy(cfg) as srv:
            remaining = await asyncio.to_thread(call, srv.port)
    assert srv.stats.get("shop", "stable").errors["connect"] == 1
    assert 3.0 < remaining < 4.6  # the read grpcio does of `4499xxxu`; 5 s passed on as it came
