"""Threat: a client that stops reading its answer (or reads it very slowly) holds the proxy's
resources: its upstream connection, paused with unread bytes, and the answer's buffer.

Rule: `timeouts.client_send` (default 60 s, nginx's send_timeout) bounds the time between two
writes the client accepts while output waits for it. When it passes, the client's connection
is cut (reset: closing would wait for the client forever), the upstream connection is closed,
not pooled, and the answer in progress counts as a client abort, never as the version's error.
A client that keeps reading, however slowly, is never cut; and an answer that ends the
connection (`Connection: close`) is written out whole before the lingering close starts.
nginx 1.22 does the same with send_timeout: it closes the client's connection and the
upstream one ("client timed out ... while sending to client").
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from splitproxy.dataplane.http import connection
from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy, version_errors
from tests.support.rawupstream import RawHandler, read_request, run_raw_upstream
from tests.support.waiting import WAIT, wait_until

MiB = 1 << 20


def _endless_upstream(ended: asyncio.Event) -> RawHandler:
    """Answers with a huge Content-Length and writes until its connection is closed."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        finally:
            ended.set()

    return handler


async def _stalled_client(port: int, request: bytes) -> socket.socket:
    """Sends `request` and never reads: a small receive buffer fills at once."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), WAIT)
    await loop.sock_sendall(sock, request)
    return sock


async def _read_until_end(sock: socket.socket) -> tuple[int, bool]:
    """Bytes the client still gets, and whether the connection ended with a reset."""
    loop = asyncio.get_running_loop()
    total = 0
    try:
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, MiB), WAIT):
            total += len(chunk)
    except ConnectionResetError:
        return total, True
    return total, False


async def test_a_client_that_stops_reading_is_cut_and_its_upstream_closed() -> None:
    """Before: the paused upstream connection was held for as long as the client lived."""
    ended = asyncio.Event()
    async with run_raw_upstream(_endless_upstream(ended)) as up:
        cfg = proxy_config([route({"stable": up.url})], timeouts={"client_send": "0.5s"})
        async with run_proxy(cfg) as srv:
            sock = await _stalled_client(srv.port, b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
            try:
                # The proxy stops reading the upstream once the client's buffers are full ...
                await wait_until(lambda: any(c.flow.write_blocked for c in srv.connections),
                                         what="the client's output to be paused")
                # ... and the send timeout closes the upstream connection: a positive signal.
                await asyncio.wait_for(ended.wait(), WAIT)
                received, reset = await _read_until_end(sock)
            finally:
                sock.close()
            assert reset and received < 1 << 40  # cut, never an answer that looks whole
            stats = srv.stats.get("shop", "stable")
            await wait_until(lambda: stats.client_aborts == 1, what="a client abort")
            assert version_errors(srv) == {}  # the client's fault, never the version's
            assert stats.responses == {} and stats.in_flight == 0
            await wait_until(lambda: not srv.connections, what="the connection gone")
            assert up.connections == 1


async def test_a_client_that_reads_slowly_is_not_cut() -> None:
    """Pauses shorter than the send timeout, for longer than it in all: served whole."""
    size = 16 * MiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"y" * 65536)
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()

    async with run_raw_upstream(handler) as up:
        cfg = proxy_config([route({"stable": up.url})], timeouts={"client_send": "2s"})
        async with run_proxy(cfg) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
                assert head.startswith(b"HTTP/1.1 200")
                got = 0
                paused_rounds = 0
                while got < size:
                    if any(c.flow.write_blocked for c in srv.connections):
                        paused_rounds += 1
                        await asyncio.sleep(0.5)  # a quarter of the timeout, then a burst
                    burst = 0
                    while burst < MiB and got < size:
                        chunk = await asyncio.wait_for(reader.read(MiB), WAIT)
                        assert chunk, f"cut after {got} bytes"
                        got += len(chunk)
                        burst += len(chunk)
            finally:
                writer.close()
    assert got == size
    assert paused_rounds >= 5  # the reader really kept the proxy waiting, > 2 s in all
    assert srv.stats.get("shop", "stable").client_aborts == 0


async def test_a_closing_answer_is_written_out_before_the_lingering_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lingering close's time starts once the answer is out, not when the upstream's
    last byte arrived: a close that aborted with the end of the answer still in the proxy's
    buffer would drop it under a client still reading. (Guard only: whether the buffer is
    non-empty at that moment depends on the kernel's buffers; here it usually is empty.)"""
    monkeypatch.setattr(connection, "LINGER_TIME", 0.2)
    size = 12 * MiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"z" * 65536)
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()

    async with run_raw_upstream(handler) as up:
        cfg = proxy_config([route({"stable": up.url})], timeouts={"client_send": "5s"})
        async with run_proxy(cfg) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                writer.write(b"GET /big HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
                assert head.startswith(b"HTTP/1.1 200")
                got = 0
                while chunk := await asyncio.wait_for(reader.read(256 * 1024), WAIT):
                    got += len(chunk)
                    await asyncio.sleep(0.03)  # ~8 MB/s: slower than the proxy can write
            finally:
                writer.close()
    assert got == size
