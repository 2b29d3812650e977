"""HTTP/2 to `https://` endpoints: ALPN h2 with the version's TLS settings (a trustme CA);
`auto` falls back to HTTP/1.1 when the endpoint picks it; an endpoint that agrees on no
protocol, or whose certificate is not trusted, is a connect failure."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from splitproxy.config.tls import UpstreamTls
from splitproxy.dataplane.h2.upstream import NotH2
from tests.support.tls import issue, server_context, write_ca

from .h2server import H2TestServer
from .pools import h2_pool, request


def tls_server_context(tmp_path: Path, ca: trustme.CA, alpn: list[str]) -> ssl.SSLContext:
    ctx = server_context(issue(ca, tmp_path, "upstream", "127.0.0.1"))
    ctx.set_alpn_protocols(alpn)
    return ctx


async def test_h2_over_tls_by_alpn(tmp_path: Path) -> None:
    ca = trustme.CA()
    tls = UpstreamTls(ca_file=write_ca(ca, tmp_path))
    server = H2TestServer()
    async with server.serve(tls_server_context(tmp_path, ca, ["h2", "http/1.1"])) as port, \
            h2_pool(port, tls=tls) as pool:
        stream = await pool.open_stream(request("/trailers"), end_stream=True)
        await stream.response()
        assert await stream.body() == b"body"
        assert stream.conn.alpn == "h2"
    async with server.serve(tls_server_context(tmp_path, ca, ["h2", "http/1.1"])) as port, \
            h2_pool(port, tls=tls, protocol="auto") as pool:
        stream = await pool.open_stream(request("/size/3"), end_stream=True)
        await stream.response()
        assert await stream.body() == b"xxx"


async def test_auto_steps_aside_for_an_http1_endpoint(tmp_path: Path) -> None:
    ca = trustme.CA()
    tls = UpstreamTls(ca_file=write_ca(ca, tmp_path))
    server = H2TestServer()
    async with server.serve(tls_server_context(tmp_path, ca, ["http/1.1"])) as port, \
            h2_pool(port, tls=tls, protocol="auto") as pool:
        with pytest.raises(NotH2, match="http/1.1"):
            await pool.open_stream(request("/"), end_stream=True)
        connections = server.state.connections
        with pytest.raises(NotH2):  # remembered: no new handshake for every request
            await pool.open_stream(request("/"), end_stream=True)
        assert server.state.connections == connections
        assert pool.conns == []


async def test_no_protocol_agreed_is_a_connect_failure(tmp_path: Path) -> None:
    ca = trustme.CA()
    tls = UpstreamTls(ca_file=write_ca(ca, tmp_path))
    server = H2TestServer()
    async with server.serve(tls_server_context(tmp_path, ca, ["http/1.1"])) as port, \
            h2_pool(port, tls=tls) as pool:
        with pytest.raises(ConnectionError, match="no protocol agreed by ALPN"):
            await pool.open_stream(request("/"), end_stream=True)


async def test_an_untrusted_certificate_is_a_tls_failure(tmp_path: Path) -> None:
    ca = trustme.CA()
    tls = UpstreamTls(ca_file=write_ca(trustme.CA(), tmp_path, "other.pem"))
    server = H2TestServer()
    async with server.serve(tls_server_context(tmp_path, ca, ["h2"])) as port, \
            h2_pool(port, tls=tls) as pool:
        with pytest.raises(ssl.SSLError):
            await pool.open_stream(request("/"), end_stream=True)
