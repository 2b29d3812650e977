"""HTTP/1.1 clients to a version that speaks HTTP/2 only (`protocol: h2`, an h2c server): the
request goes over the HTTP/2 pool and the answer comes back as HTTP/1.1, chunked or with
its Content-Length; bodies stream both ways under flow control; an upstream reset is the
version's 502; the client's connection is reused afterwards."""

from __future__ import annotations

import asyncio
import http.client

from splitproxy.dataplane.h2.bridge import H1Bridge
from splitproxy.dataplane.http.downstream import DownstreamProtocol
from splitproxy.dataplane.server import ProxyServer
from tests.dataplane.h2.h2server import H2TestServer, ServerKnobs
from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import build_request, raw_client
from tests.support.waiting import wait_until


def h2_config(port: int) -> dict[str, object]:
    r = route({"stable": f"http://127.0.0.1:{port}"})
    r["versions"]["stable"]["protocol"] = "h2"
    return proxy_config([r])


async def test_get_post_head_204_on_one_keep_alive_connection() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: many of the upstream's 64 KiB windows
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            raw_client(srv.port) as client:
        got = await client.request("GET", "/size/1000", {"X-A": "1"})
        echoed = await client.request("POST", "/echo", body=payload)
        head = await client.request("HEAD", "/sized/10")
        empty = await client.request("GET", "/empty")
        sized = await client.request("GET", "/sized/5")
    assert got.status == 200 and got.body == b"x" * 1000
    assert got.header("transfer-encoding") == "chunked" and got.header("x-request-id")
    assert echoed.status == 200 and echoed.body == payload
    assert head.status == 200 and head.header("content-length") == "10" and head.body == b""
    assert empty.status == 204 and empty.header("transfer-encoding") is None
    assert sized.body == b"yyyyy" and sized.header("content-length") == "5"
    # One client connection, one upstream connection: five streams on it.
    assert upstream.state.connections == 1 and upstream.state.streams == 5
    first = upstream.state.request_headers[0]
    names = [n for n, _ in first]
    assert names[:4] == [b":method", b":scheme", b":authority", b":path"]
    sent = dict(first)
    assert sent[b":authority"] == b"shop.example.com" and sent[b":path"] == b"/size/1000"
    assert sent[b"x-a"] == b"1" and sent[b"x-forwarded-for"] == b"127.0.0.1"
    assert b"host" not in sent and b"connection" not in sent
    assert dict(upstream.state.request_headers[1])[b"content-length"] == b"%d" % len(payload)
    assert upstream.state.received[3] == len(payload)
    assert srv.stats.get("shop", "stable").responses == {200: 4, 204: 1}


async def test_a_chunked_upload_streams_to_the_upstream() -> None:
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            raw_client(srv.port) as client:
        await client.send(build_request("POST", "/echo", {"Transfer-Encoding": "chunked"})
                          + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        resp = await client.read_response()
    assert resp.status == 200 and resp.body == b"hello world"
    assert b"transfer-encoding" not in dict(upstream.state.request_headers[0])


async def test_an_upstream_reset_is_the_versions_502_and_the_connection_goes_on() -> None:
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            raw_client(srv.port) as client:
        failed = await client.request("GET", "/reset")
        after = await client.request("GET", "/size/3")
    assert failed.status == 502
    assert after.status == 200 and after.body == b"xxx"
    stats = srv.stats.get("shop", "stable")
    assert stats.responses == {502: 1, 200: 1}
    assert stats.errors["reset"] == 1


async def test_http_client_library_against_an_h2c_upstream() -> None:
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv:
        def calls() -> list[tuple[int, bytes]]:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            out = []
            for method, path, body in (("GET", "/size/7", None), ("POST", "/echo", b"abc"),
                                       ("GET", "/size/2", None)):
                conn.request(method, path, body=body)
                resp = conn.getresponse()
                out.append((resp.status, resp.read()))
            conn.close()
            return out
        answers = await asyncio.to_thread(calls)
    assert answers == [(200, b"x" * 7), (200, b"abc"), (200, b"xx")]
    assert upstream.state.connections == 1


def held_credit(srv: ProxyServer) -> int:
    return sum(c.current.held_credit for c in srv.connections
               if isinstance(c, DownstreamProtocol) and isinstance(c.current, H1Bridge))


def bridged_paused(srv: ProxyServer) -> bool:
    return any(isinstance(owner, H1Bridge)
               for conn in srv.connections for owner in conn.flow.paused_by)


async def test_a_slow_upstream_pauses_the_clients_upload() -> None:
    """The upstream takes nothing past its first window: the proxy stops reading the client
    (it holds at most its high-water mark of body), and reads again when the client goes."""
    upstream = H2TestServer(ServerKnobs(hold_credit=True))
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            raw_client(srv.port) as client:
        size = 64 << 20
        client.writer.write(build_request("POST", "/echo", {"Content-Length": str(size)},
                                          content_length=False))
        chunk = b"z" * (1 << 20)
        for _ in range(size >> 20):
            client.writer.write(chunk)  # not drained: the proxy must stop reading
        await wait_until(lambda: bridged_paused(srv), what="the client's reading paused")
        await wait_until(lambda: sum(upstream.state.received.values()) == 65535,
                         what="the upstream's window filled")
        assert client.writer.transport.get_write_buffer_size() > 0
    assert sum(upstream.state.received.values()) == 65535


async def test_a_client_that_does_not_read_holds_the_upstreams_window() -> None:
    """The answer's credit goes back upstream only as the client's socket takes it: an
    unread answer stops the upstream (its window shut), not piles up in the proxy."""
    size = 32 << 20
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            raw_client(srv.port) as client:
        await client.send(build_request("GET", f"/size/{size}"))
        await wait_until(lambda: held_credit(srv) > 0, what="credit held for the client")
        await wait_until(lambda: bool(upstream.state.blocked),
                         what="the upstream waiting for the proxy's window")
        held_at = sum(upstream.state.sent.values())
        # What waits in the proxy: the socket's high-water mark and one stream window, at most.
        buffered = sum(c.flow.transport.get_write_buffer_size() for c in srv.connections
                       if c.flow.transport is not None)
        resp = await client.read_response()
    assert held_at < size and buffered <= (1 << 20) + (256 << 10) + (64 << 10)
    assert resp.status == 200 and len(resp.body) == size
    assert srv.stats.get("shop", "stable").responses == {200: 1}


async def test_an_upgrade_request_is_answered_without_a_tunnel() -> None:
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            raw_client(srv.port) as client:
        resp = await client.request("GET", "/size/3", {"Connection": "Upgrade",
                                                       "Upgrade": "websocket"})
        after = await client.request("GET", "/size/2")
    assert resp.status == 200 and resp.body == b"xxx"
    assert after.status == 200 and after.body == b"xx"
    assert b"upgrade" not in dict(upstream.state.request_headers[0])
    assert srv.stats.get("shop", "stable").responses == {200: 2}


async def test_an_http10_client_reads_an_unframed_answer_to_the_close() -> None:
    upstream = H2TestServer()
    async with upstream.serve() as port, run_proxy(h2_config(port)) as srv, \
            raw_client(srv.port) as client:
        await client.send(b"GET /size/5 HTTP/1.0\r\nHost: shop.example.com\r\n\r\n")
        raw = await client.read_until_close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head
    assert b"Transfer-Encoding" not in head and body == b"xxxxx"
    assert srv.stats.get("shop", "stable").responses == {200: 1}
