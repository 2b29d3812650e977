"""Writes batched per loop turn (`batch.WriteBatch`), end to end: many connections at once,
each with pipelined requests of every kind (small and large answers, HEAD, 204, uploads,
chunked answers, the proxy's own errors, a closing last request), get every answer whole and
in order, with gathering as under load and with it on for every write; and the count of busy
connections it is steered by comes back to zero however the connections end."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import pytest

from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import RawClient, build_request, raw_client
from tests.support.rawupstream import read_request, run_raw_upstream
from tests.support.upstream import run_upstream
from tests.support.waiting import wait_until

CONNECTIONS = 12
BIG = 70_000  # over the batch's SMALL: goes out at once, after what waits
SLOW_ANSWER = 2  # seconds: all six connections are busy well before, and answered well within WAIT


class RecordingTunnel:
    """A raw upstream that answers an upgrade with 101 and records what comes through the
    tunnel until the proxy ends it; `writers` holds its side of each tunnel."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.ended = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                     b"Upgrade: raw\r\n\r\n")
        await writer.drain()
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                self.received.append(data)
        finally:
            self.ended.set()

    @contextlib.asynccontextmanager
    async def through_proxy(self) -> AsyncIterator[RawClient]:
        """A proxy in front of this upstream, gathering every write (as under load), and a
        client whose upgrade it answered 101: the tunnel is open."""
        async with run_raw_upstream(self) as up:
            async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
                srv.state.writes.gather_from = 0
                async with raw_client(srv.port) as c:
                    await c.send(build_request("GET", "/t", {"Connection": "Upgrade",
                                                             "Upgrade": "raw"}))
                    assert (await c.read_head()).status == 101
                    yield c


async def one_connection(port: int, n: int) -> None:
    upload = bytes([n]) * 5000
    async with raw_client(port) as c:
        await c.send(
            build_request("GET", f"/n/{n}")
            + build_request("GET", f"/download?size={BIG}")
            + build_request("HEAD", "/download?size=100000")
            + build_request("GET", "/status/204")
            + build_request("POST", "/echo", body=upload)
            + build_request("GET", "/chunked?n=3&delay=0")
            + build_request("GET", "/", host="nobody.example.com")  # the proxy's own 404
            + build_request("GET", f"/last/{n}", {"Connection": "close"})
        )
        first = await c.read_response()
        assert (first.status, first.header("x-path")) == (200, f"/n/{n}")
        big = await c.read_response()
        assert (big.status, len(big.body)) == (200, BIG)
        head = await c.read_response("HEAD")
        assert (head.status, head.header("content-length"), head.body) == (200, "100000", b"")
        assert (await c.read_response()).status == 204
        echoed = await c.read_response()
        assert hashlib.sha256(echoed.body).digest() == hashlib.sha256(upload).digest()
        chunked = await c.read_response()
        assert chunked.body == b"part0\npart1\npart2\n"
        assert (await c.read_response()).status == 404
        last = await c.read_response()
        assert (last.status, last.header("x-path")) == (200, f"/last/{n}")
        assert (last.header("connection") or "").lower() == "close"
        assert await c.is_closed()


@pytest.mark.parametrize("gather_from", [0, 2], ids=["always", "as-under-load"])
async def test_pipelined_answers_of_many_connections_arrive_whole_and_in_order(
    gather_from: int,
) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url}, match={"host": "shop.example.com"})])
        async with run_proxy(cfg) as srv:
            writes = srv.state.writes
            writes.gather_from = gather_from
            await asyncio.gather(*(one_connection(srv.port, n) for n in range(CONNECTIONS)))
            await wait_until(lambda: writes.busy == 0, what=lambda: f"busy={writes.busy}")


async def test_the_busy_count_comes_back_to_zero_when_clients_leave_mid_answer() -> None:
    """Six clients, each with a slow answer in flight and a request queued behind it, reset
    their connections. Reading is paused on a connection with a queued request (pipelining),
    so the proxy may learn of the reset only when it writes the answer (after SLOW_ANSWER
    seconds): either way the count comes back to zero."""
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})])
        async with run_proxy(cfg) as srv:
            writes = srv.state.writes
            async with contextlib.AsyncExitStack() as stack:
                clients: list[RawClient] = []
                for i in range(6):
                    c = await stack.enter_async_context(raw_client(srv.port))
                    clients.append(c)
                    # A slow answer, and a request queued behind it (pipelined).
                    await c.send(build_request("GET", f"/slow?delay={SLOW_ANSWER}&i={i}")
                                 + build_request("GET", "/queued"))
                await wait_until(lambda: writes.busy == 6, what=lambda: f"busy={writes.busy}")
                for c in clients:
                    c.writer.transport.abort()
                await wait_until(lambda: writes.busy == 0,
                                 what=lambda: f"busy={writes.busy}")
            # And the server goes on answering.
            async with raw_client(srv.port) as c:
                assert (await c.request("GET", "/after")).status == 200
            assert writes.busy == 0


async def test_a_tunnels_last_bytes_before_the_client_closes_reach_the_upstream() -> None:
    """The client writes into a tunnel and goes away at once, with every write gathered: what
    it wrote reaches the upstream before the proxy closes that side (the unit tests hold the
    release before an abort in the same turn)."""
    tunnel = RecordingTunnel()
    async with tunnel.through_proxy() as c:
        c.writer.write(b"last words")
        c.writer.transport.abort()
        await asyncio.wait_for(tunnel.ended.wait(), 5)
    assert b"".join(tunnel.received) == b"last words"


async def test_an_answer_reaches_a_client_whose_end_of_input_comes_in_the_same_turn() -> None:
    """A client that sends its request and then shuts its side (FIN) is answered: the
    upstream's answer and the client's end of input arrive for the same poll of the loop (the
    answer first), so the answer still waits in the batch when the transport, its protocol
    having no exchange in flight, closes itself."""
    client: list[RawClient] = []

    async def answer_then_client_ends(reader: asyncio.StreamReader,
                                      writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        client[0].writer.write_eof()  # both sockets readable before the proxy polls again
        await reader.read()

    async with run_raw_upstream(answer_then_client_ends) as up:
        async with run_proxy(proxy_config([route({"stable": up.url})])) as srv:
            srv.state.writes.gather_from = 0  # gather every write, as under load
            async with raw_client(srv.port) as c:
                client.append(c)
                await c.send(build_request("GET", "/half-closed"))
                data = await c.read_until_close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"hello"), data


async def test_a_tunnels_bytes_reach_an_upstream_whose_end_of_output_comes_in_the_same_turn(
) -> None:
    """The client writes into a tunnel as the upstream ends its output (FIN), both read in the
    same turn: the upstream connection's transport closes itself on its end of input, so what
    waits for it is written first (the upstream still reads: it only half-closed)."""
    tunnel = RecordingTunnel()
    async with tunnel.through_proxy() as c:
        await wait_until(lambda: bool(tunnel.writers), what=lambda: "the tunnel")
        c.writer.write(b"last words")  # the client's bytes first, then the upstream's FIN
        tunnel.writers[0].write_eof()
        await asyncio.wait_for(tunnel.ended.wait(), 5)
    assert b"".join(tunnel.received) == b"last words"


WS = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


async def test_the_busy_count_comes_back_to_zero_on_every_way_an_exchange_ends() -> None:
    """Rejects, a refused upgrade with a request held behind it, a tunnel, 100-continue, the
    proxy's own answers, HTTP/2 by prior knowledge: each ends with no connection busy."""
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url}, match={"host": "shop.example.com"})])
        async with run_proxy(cfg) as srv:
            writes = srv.state.writes
            writes.gather_from = 0  # gather every write, as under load

            async def idle() -> None:
                await wait_until(lambda: writes.busy == 0, what=lambda: f"busy={writes.busy}")

            async with raw_client(srv.port) as c:  # a malformed request: 400, closed
                await c.send(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nBad Header\r\n\r\n")
                assert (await c.read_response()).status == 400
                assert await c.is_closed()
            await idle()
            async with raw_client(srv.port) as c:  # refused upgrade, a request held behind it
                await c.send(build_request("GET", "/", {"Connection": "Upgrade",
                                                        "Upgrade": "raw"})
                             + build_request("GET", "/after"))
                assert (await c.read_response()).status == 200
                assert (await c.read_response()).status == 200
                await idle()
            async with raw_client(srv.port) as c:  # a tunnel, then the client goes
                await c.send(build_request("GET", "/ws", WS))
                assert (await c.read_head()).status == 101
                await idle()
            await idle()
            async with raw_client(srv.port) as c:  # 100-continue, then a local 404
                await c.send(build_request("POST", "/echo", {"Expect": "100-continue",
                                                             "Content-Length": "5"}))
                assert (await c.read_head()).status == 100
                await c.send(b"hello")
                echoed = await c.read_response()
                assert (echoed.status, echoed.body) == (200, b"hello")
                assert (await c.request("GET", "/", host="nobody.example.com")).status == 404
                await idle()
            async with raw_client(srv.port) as c:  # HTTP/2 by prior knowledge
                await c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9))
                await c.read_until_close()
            await idle()
