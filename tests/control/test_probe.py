"""One probe against real sockets on 127.0.0.1: what counts as a success, and the reason
given for each kind of failure."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme

from splitproxy.config.healthcheck import HealthCheck
from splitproxy.config.tls import UpstreamTls
from splitproxy.dataplane.http.probe import probe
from splitproxy.dataplane.http.probe_h2 import probe_host
from splitproxy.routing.table import Endpoint
from tests.support.tls import issue, server_context, write_ca


@asynccontextmanager
async def answering(reply: bytes, tls: ssl.SSLContext | None = None
                    ) -> AsyncIterator[tuple[Endpoint, list[bytes]]]:
    """A server that reads the request head, sends `reply` and closes."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield Endpoint("127.0.0.1", server.sockets[0].getsockname()[1]), heads
    finally:
        server.close()


async def test_a_2xx_passes_and_the_request_is_a_plain_get() -> None:
    async with answering(b"HTTP/1.1 204 No Content\r\n\r\n") as (ep, heads):
        assert await probe(ep, HealthCheck(path="/ready")) is None
    assert heads[0].startswith(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Connection: close\r\n" in heads[0]


async def test_a_status_outside_expect_status_fails() -> None:
    async with answering(b"HTTP/1.1 204 No Content\r\n\r\n") as (ep, _):
        assert await probe(ep, HealthCheck(expect_status=(200,))) == "status 204"
    async with answering(b"HTTP/1.1 500 Oops\r\n\r\n") as (ep, _):
        assert await probe(ep, HealthCheck()) == "status 500"


async def test_no_answer_or_not_http_fails() -> None:
    async with answering(b"") as (ep, _):
        assert await probe(ep, HealthCheck()) == "no HTTP status line"
    async with answering(b"SSH-2.0-OpenSSH\r\n") as (ep, _):
        assert (await probe(ep, HealthCheck()) or "").startswith("bad status line")


async def test_a_refused_connection_fails(refused_port: Callable[[], int]) -> None:
    error = await probe(Endpoint("127.0.0.1", refused_port()), HealthCheck())
    assert error is not None and error.startswith("ConnectionRefusedError"), error


SNI = UpstreamTls(server_name="api.internal")


@pytest.mark.parametrize(("endpoint", "check", "host"), [
    (Endpoint("127.0.0.1", 9001), HealthCheck(), "127.0.0.1:9001"),
    (Endpoint("api.internal", 80), HealthCheck(), "api.internal"),
    (Endpoint("::1", 9001), HealthCheck(), "[::1]:9001"),
    (Endpoint("10.0.0.7", 443, SNI), HealthCheck(), "api.internal"),
    (Endpoint("10.0.0.7", 8443, SNI), HealthCheck(), "api.internal:8443"),
    (Endpoint("10.0.0.7", 443, UpstreamTls()), HealthCheck(), "10.0.0.7"),
    (Endpoint("10.0.0.7", 8443, SNI), HealthCheck(host="health.internal"),
     "health.internal:8443"),
    (Endpoint("10.0.0.7", 80), HealthCheck(host="health.internal"), "health.internal"),
], ids=["ip", "name-default-port", "ipv6", "server-name", "server-name-port", "tls-no-name",
        "check-host-wins", "check-host-default-port"])
def test_the_probe_names_the_configured_host(endpoint: Endpoint, check: HealthCheck,
                                              host: str) -> None:
    assert probe_host(endpoint, check) == host


async def test_a_check_host_is_the_probes_host_header() -> None:
    async with answering(b"HTTP/1.1 200 OK\r\n\r\n") as (ep, heads):
        assert await probe(ep, HealthCheck(host="health.internal")) is None
    assert f"\r\nHost: health.internal:{ep.port}\r\n".encode() in heads[0]


async def test_a_tls_endpoint_is_probed_as_its_server_name(tmp_path: Path) -> None:
    """The name the endpoint's certificate is verified against is the Host the probe asks
    for: the upstream's virtual host, not the IP address it is reached at."""
    ca = trustme.CA()
    cert = issue(ca, tmp_path, "up", "api.internal")
    tls = UpstreamTls(ca_file=write_ca(ca, tmp_path), server_name="api.internal")
    async with answering(b"HTTP/1.1 200 OK\r\n\r\n", server_context(cert)) as (ep, heads):
        endpoint = Endpoint(ep.host, ep.port, tls)
        assert await probe(endpoint, HealthCheck()) is None
    assert f"\r\nHost: api.internal:{ep.port}\r\n".encode() in heads[0]
