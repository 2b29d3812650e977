"""Active health checks of HTTP/2 versions: a GET over h2c or TLS ALPN h2, the gRPC health
check (grpc.health.v1) against a real grpcio server, and the prober taking an endpoint out
and back in on it."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from splitproxy.config.healthcheck import HealthCheck
from splitproxy.config.models import load
from splitproxy.config.tls import UpstreamTls
from splitproxy.dataplane.http.pool import Pools
from splitproxy.dataplane.http.probe import Prober, checks_of
from splitproxy.dataplane.http.probe_h2 import check_request, probe_h2, serving_status
from splitproxy.routing.table import Endpoint
from tests.support.tls import issue, server_context, write_ca
from tests.support.waiting import wait_until

from .grpcserver import grpc_server
from .h2server import H2TestServer

GRPC = HealthCheck(grpc_service="", timeout=2.0)


def h2(port: int, tls: UpstreamTls | None = None, protocol: str = "h2") -> Endpoint:
    return Endpoint("127.0.0.1", port, tls, protocol)


def test_health_messages_on_the_wire() -> None:
    assert check_request("") == b"\x00\x00\x00\x00\x00"
    assert check_request("orders") == b"\x00\x00\x00\x00\x08\x0a\x06orders"
    assert serving_status(b"\x00\x00\x00\x00\x02\x08\x01") == 1
    assert serving_status(b"\x00\x00\x00\x00\x02\x08\x02") == 2
    assert serving_status(b"\x00\x00\x00\x00\x00") == 0  # the default: UNKNOWN
    assert serving_status(b"\x00\x00\x00\x00\x06\x12\x02ab\x08\x01") == 1  # a newer field
    assert serving_status(b"\x01\x00\x00\x00\x02\x08\x01") is None  # compressed: not ours
    assert serving_status(b"\x00\x00\x00\x00\x05\x08\x01") is None  # cut short


async def test_a_get_over_h2c_is_judged_by_its_status() -> None:
    server = H2TestServer()
    async with server.serve() as port:
        assert await probe_h2(h2(port), HealthCheck(path="/size/1")) is None
        assert await probe_h2(h2(port), HealthCheck(path="/nope")) == "status 404"
        assert await probe_h2(h2(port), HealthCheck(path="/nope", expect_status=(404,))) \
            is None
        assert server.state.paths == ["/size/1", "/nope", "/nope"]



async def test_the_probe_names_the_checks_host_as_its_authority() -> None:
    server = H2TestServer()
    async with server.serve() as port:
        assert await probe_h2(h2(port), HealthCheck(path="/size/1")) is None
        assert await probe_h2(h2(port), HealthCheck(path="/size/1", host="shop.internal")) \
            is None
    authorities = [dict(h)[b":authority"] for h in server.state.request_headers]
    assert authorities == [f"127.0.0.1:{port}".encode(), f"shop.internal:{port}".encode()]


async def test_the_grpc_health_check(refused_port: object) -> None:
    health = {"": 1, "orders": 2}
    with grpc_server(health) as (port, _):
        assert await probe_h2(h2(port), GRPC) is None
        orders = HealthCheck(grpc_service="orders", timeout=2.0)
        assert await probe_h2(h2(port), orders) == "NOT_SERVING"
        health["orders"] = 1
        assert await probe_h2(h2(port), orders) is None
        unknown = HealthCheck(grpc_service="billing", timeout=2.0)
        assert await probe_h2(h2(port), unknown) == "grpc-status 5 (unknown service)"
        # Why a gRPC version needs `grpc_service`: the server resets a plain GET.
        reset = await probe_h2(h2(port), HealthCheck(timeout=2.0))
        assert reset is not None and reset.startswith("stream reset")
    with grpc_server() as (port, _):
        assert await probe_h2(h2(port), GRPC) == "grpc-status 12 (no grpc.health.v1 service)"
    assert callable(refused_port)
    problem = await probe_h2(h2(refused_port()), GRPC)
    assert problem is not None and problem.startswith("ConnectionRefusedError")


@contextlib.asynccontextmanager
async def http1_tls_server(ctx: ssl.SSLContext) -> AsyncIterator[int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_alpn_h2_and_auto_falling_back_to_http1(tmp_path: Path) -> None:
    ca = trustme.CA()
    tls = UpstreamTls(ca_file=write_ca(ca, tmp_path))
    leaf = issue(ca, tmp_path, "upstream", "127.0.0.1")
    h2_ctx = server_context(leaf)
    h2_ctx.set_alpn_protocols(["h2"])
    server = H2TestServer()
    async with server.serve(h2_ctx) as port:
        assert await probe_h2(h2(port, tls), HealthCheck(path="/size/1")) is None
        assert await probe_h2(h2(port, tls, "auto"), HealthCheck(path="/size/1")) is None
    http1_ctx = server_context(leaf)
    http1_ctx.set_alpn_protocols(["http/1.1"])
    async with http1_tls_server(http1_ctx) as port:
        assert await probe_h2(h2(port, tls, "auto"), HealthCheck()) is None
        assert await probe_h2(h2(port, tls, "auto"), GRPC) == "no HTTP/2 by ALPN (http/1.1)"
        refused = await probe_h2(h2(port, tls), HealthCheck())
        assert refused == "no HTTP/2 by ALPN (none agreed)"


async def test_the_prober_takes_a_not_serving_endpoint_out_and_back(tmp_path: Path) -> None:
    health = {"": 1}
    with grpc_server(health) as (port, _):
        config_path = tmp_path / "config.yaml"
        config_path.write_text(f"""\
routes:
  - name: orders
    versions:
      stable:
        endpoints: ["http://127.0.0.1:{port}"]
        protocol: h2
        health_check: {{grpc_service: "", interval: 20ms, timeout: 2s,
                        healthy_threshold: 1, unhealthy_threshold: 1}}
    weights: {{stable: 1}}
""")
        config = load(config_path)
        (endpoint,) = checks_of(config)
        assert endpoint.protocol == "h2"
        loop = asyncio.get_running_loop()
        pools = Pools(loop, 2.0, 60.0)
        pool = pools.get(endpoint)
        prober = Prober(pools)
        prober.configure(config)
        try:
            await wait_until(lambda: prober.states[endpoint].last_result == "success",
                             what="a first successful probe")
            assert not pool.probe_down
            health[""] = 2
            await wait_until(lambda: pool.probe_down, what="NOT_SERVING taken out")
            assert prober.states[endpoint].last_error == "NOT_SERVING"
            health[""] = 1
            await wait_until(lambda: not pool.probe_down, what="SERVING back in")
        finally:
            prober.close()
            pools.close()


@pytest.mark.parametrize("service", ["", "orders"])
def test_check_request_is_what_protobuf_writes(service: str) -> None:
    from google.protobuf import (  # type: ignore[import-untyped]  # no stubs installed
        descriptor_pb2,
        descriptor_pool,
        message_factory,
    )

    file = descriptor_pb2.FileDescriptorProto(name="h.proto", package="grpc.health.v1",
                                              syntax="proto3")  # as health.proto
    message = file.message_type.add(name="HealthCheckRequest")
    message.field.add(name="service", number=1, type=9, label=1)  # string, optional
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest"))
    encoded = cls(service=service).SerializeToString()
    assert check_request(service)[5:] == encoded
