"""Flow control of an HTTP/2 stream proxied to an HTTP/1.1 version, both ways, on real sockets:
an upstream that does not read stops the client's upload (the stream's WINDOW_UPDATEs are held
back), a client that returns no credit stops the proxy reading the upstream (its transport is
paused); in both cases the proxy holds a bounded number of bytes, and everything arrives intact
once the slow side goes on. The other streams of the connection, and other connections, are
not held with it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import pytest
from h2.errors import ErrorCodes

from splitproxy.dataplane.h2 import limits
from splitproxy.dataplane.h2.server import H2Server
from splitproxy.dataplane.h2.stream import H2Stream
from splitproxy.dataplane.http.flow import WRITE_HIGH_WATER
from splitproxy.dataplane.http.upstream import UpstreamConnection
from splitproxy.dataplane.server import ProxyServer
from tests.support.configs import proxy_config, route
from tests.support.h2client import H2Client, h2_client
from tests.support.proxy import run_proxy
from tests.support.rawupstream import answer, read_request, run_raw_upstream
from tests.support.upstream import run_upstream
from tests.support.waiting import wait_until

SIZE = 32 << 20
BODY = random.Random(2026).randbytes(SIZE)  # no period: a lost or reordered frame shows
DIGEST = hashlib.sha256(BODY).hexdigest()
BLOCK = 64 << 10
SLOW = 30.0  # 32 MiB through two h2 state machines in Python, on a loaded machine
HELD = 20.0  # for the held state: well before the test's own timeout (60 s)
WINDOW = limits.INITIAL_WINDOW_SIZE  # the proxy's stream window, and a client's by default
# What an asyncio upstream's StreamReader holds before it pauses reading (twice its 64 KiB
# limit) and one more read (256 KiB at most).
READER_HOLDS = 2 * (64 << 10) + (256 << 10)


@dataclass
class HeldUpload:
    """An HTTP/1.1 upstream that accepts and reads nothing until `release` is set (a small
    SO_RCVBUF: the proxy's writes to it stop after a few kilobytes), then answers each request
    with the size and SHA-256 of its body."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    got: list[tuple[int, str]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        await self.release.wait()
        while (req := await read_request(reader)) is not None:
            digest = hashlib.sha256(req.body).hexdigest()
            self.got.append((len(req.body), digest))
            writer.write(answer(f"{len(req.body)} {digest}".encode()))
            await writer.drain()

    def stopped_reading(self, first: int = 0) -> bool:
        """The socket of a connection it accepted (the `first` or a later one) has its bytes
        pile up unread (asyncio paused the transport's reading)."""
        return any(not cast(asyncio.Transport, w.transport).is_reading()
                   for w in self.writers[first:])


@dataclass
class BigDownload:
    """An HTTP/1.1 upstream that answers each request with BODY (Content-Length), written in
    BLOCKs, each after the previous one drained: `sent` is what the proxy's socket took."""

    sent: int = 0
    draining: bool = False  # waiting for the proxy to read (its writing is paused)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
            for offset in range(0, SIZE, BLOCK):
                writer.write(BODY[offset:offset + BLOCK])
                self.sent = offset + BLOCK
                self.draining = True
                await writer.drain()
                self.draining = False


@dataclass
class Setup:
    srv: ProxyServer
    upload: HeldUpload
    download: BigDownload


@contextlib.asynccontextmanager
async def proxy() -> AsyncIterator[Setup]:
    """Routes: /held-upload to a HeldUpload, /held-download to a BigDownload, the rest to an
    ordinary upstream (`/` answers "stable", `/echo` echoes)."""
    upload, download = HeldUpload(), BigDownload()
    async with run_raw_upstream(upload.handle, rcvbuf=4096) as held, \
            run_raw_upstream(download.handle) as big, run_upstream("stable") as plain:
        cfg = proxy_config([
            route({"stable": held.url}, name="upload", match={"path_prefix": "/held-upload"}),
            route({"stable": big.url}, name="download",
                  match={"path_prefix": "/held-download"}),
            route({"stable": plain.url}),
        ])
        async with run_proxy(cfg) as srv:
            try:
                yield Setup(srv, upload, download)
            finally:
                upload.release.set()  # a failed test must not leave a handler waiting


def proxy_stream(srv: ProxyServer, path: bytes) -> H2Stream | None:
    """The proxy's side of the (only) stream for `path`."""
    for conn in srv.connections:
        server = cast(object, conn)
        if isinstance(server, H2Server):
            for stream in server.streams.values():
                if stream.path == path:
                    return stream
    return None


def upload_held(client: H2Client, sid: int, stream: H2Stream | None,
                upload: HeldUpload, first: int = 0) -> bool:
    """The upstream stopped reading, the proxy's write to it paused the stream (its owner is
    the upstream connection), and the client's window for the stream is spent."""
    return stream is not None and upload.stopped_reading(first) \
        and any(isinstance(owner, UpstreamConnection) for owner in stream.flow.paused_by) \
        and client.conn.local_flow_control_window(sid) == 0


def download_held(client: H2Client, sid: int, stream: H2Stream | None,
                  download: BigDownload) -> bool:
    """The client got one window of the answer, the proxy paused its upstream's transport
    for it, and the upstream waits for the proxy to read."""
    ex = stream.exchange if stream is not None else None
    up = ex.up if ex is not None else None
    return stream is not None and up is not None and up.transport is not None \
        and stream.flow.paused_upstream is up.transport and download.draining \
        and client.responses[sid].received == WINDOW


def sock_buffer(transport: asyncio.BaseTransport | None, option: int) -> int:
    """A socket's kernel buffer size now (SO_SNDBUF, SO_RCVBUF): Linux grows them on its own,
    up to net.ipv4.tcp_wmem / tcp_rmem."""
    assert transport is not None
    sock = transport.get_extra_info("socket")
    return int(sock.getsockopt(socket.SOL_SOCKET, option))


def upstream_buffer(stream: H2Stream) -> int:
    """Request bytes the proxy holds for the upstream: its transport's write buffer."""
    ex = stream.exchange
    assert ex is not None and ex.up is not None and ex.up.transport is not None
    return ex.up.transport.get_write_buffer_size() + ex.pending_size


def answer_buffer(stream: H2Stream) -> int:
    """Answer bytes the proxy holds for the client: re-framed body bytes the stream's window
    does not take, and what the exchange has not written yet."""
    ex = stream.exchange
    assert ex is not None
    return sum(len(b) for b in stream.out) + sum(len(b) for b in ex.out)


async def start_upload(client: H2Client) -> tuple[int, asyncio.Task[None]]:
    sid = client.request("POST", "/held-upload", [("content-length", str(SIZE))], end=False)
    return sid, asyncio.create_task(client.send_body(sid, BODY, timeout=SLOW))


async def check_upload_held(setup: Setup, client: H2Client, sid: int,
                            first: int = 0) -> H2Stream:
    """Waits for the held state (on the upstream's `first` connection or a later one), then
    checks that it holds and what it costs the proxy."""
    srv, upload = setup.srv, setup.upload
    await wait_until(lambda: upload_held(client, sid, proxy_stream(srv, b"/held-upload"),
                                         upload, first), HELD,
                     what=lambda: f"the upload held (sent {client.sent_body.get(sid)}, window "
                                  f"{client.conn.local_flow_control_window(sid)})")
    stream = proxy_stream(srv, b"/held-upload")
    assert stream is not None
    sent = client.sent_body[sid]
    # Every frame the proxy wrote before its PING ACK is in: no WINDOW_UPDATE among them.
    await client.ping()
    assert client.conn.local_flow_control_window(sid) == 0
    assert client.sent_body[sid] == sent
    assert upload_held(client, sid, stream, upload, first)
    # The proxy holds its upstream socket's high-water mark, a frame written past it and the
    # stream's window, at most.
    held = upstream_buffer(stream)
    assert held <= WRITE_HIGH_WATER + limits.MAX_FRAME_SIZE + WINDOW, held
    # The rest of what the client sent is in the kernel's buffers between the proxy and the
    # upstream, and in the upstream's reader.
    ex = stream.exchange
    assert ex is not None and ex.up is not None
    kernel = sock_buffer(ex.up.transport, socket.SO_SNDBUF) + sum(
        sock_buffer(w.transport, socket.SO_RCVBUF) for w in upload.writers)
    assert sent <= held + kernel + READER_HOLDS, (sent, held, kernel)
    assert sent < SIZE // 4, sent
    return stream


async def check_download_held(setup: Setup, client: H2Client, sid: int) -> H2Stream:
    srv, download = setup.srv, setup.download
    await wait_until(lambda: download_held(client, sid, proxy_stream(srv, b"/held-download"),
                                           download), HELD,
                     what=lambda: f"the download held (got {client.responses[sid].received}, "
                                  f"upstream sent {download.sent})")
    stream = proxy_stream(srv, b"/held-download")
    assert stream is not None and stream.exchange is not None
    up = stream.exchange.up
    assert up is not None and up.transport is not None
    # Every frame the proxy wrote before its PING ACK is in: nothing past the window, and the
    # proxy still does not read the upstream.
    await client.ping()
    assert client.responses[sid].received == WINDOW
    assert stream.flow.paused_upstream is up.transport and not up.transport.is_reading()
    # One read of the upstream socket (uvloop reads 256 KiB at most) waits in the proxy.
    held = answer_buffer(stream)
    assert held <= (256 << 10) + BLOCK, held
    # The rest of what the upstream sent is in the kernel's buffers between the two, and in
    # the upstream's own transport (its 64 KiB high-water mark and the BLOCK written past it).
    sent = download.sent
    kernel = sock_buffer(up.transport, socket.SO_RCVBUF) + sum(
        sock_buffer(w.transport, socket.SO_SNDBUF) for w in download.writers)
    assert sent <= WINDOW + held + kernel + 2 * BLOCK, (sent, held, kernel)
    assert sent < SIZE // 4, sent
    return stream


async def test_a_held_upstream_stops_the_clients_upload_credit() -> None:
    async with proxy() as setup, h2_client(setup.srv.port) as client:
        sid, sending = await start_upload(client)
        await check_upload_held(setup, client, sid)
        setup.upload.release.set()
        await asyncio.wait_for(sending, SLOW)
        resp = await client.response(sid, SLOW)
    assert resp.status == 200 and resp.body == f"{SIZE} {DIGEST}".encode()
    assert setup.upload.got == [(SIZE, DIGEST)]
    assert setup.srv.stats.get("upload", "stable").responses == {200: 1}


async def test_a_client_that_returns_no_credit_pauses_the_upstream() -> None:
    async with proxy() as setup, h2_client(setup.srv.port) as client:
        sid = client.request("GET", "/held-download")
        client.holding.add(sid)  # no WINDOW_UPDATE at all: the connection's window shuts too
        await check_download_held(setup, client, sid)
        client.release_credit(sid)
        resp = await client.response(sid, SLOW)
    assert resp.status == 200 and resp.reset is None and resp.received == SIZE
    assert hashlib.sha256(resp.body).hexdigest() == DIGEST
    assert setup.download.sent == SIZE
    assert setup.srv.stats.get("download", "stable").responses == {200: 1}


async def test_other_streams_and_connections_go_on_while_streams_are_held() -> None:
    echo = random.Random(7).randbytes(4 * WINDOW)  # many windows: credit flows for it
    async with proxy() as setup, h2_client(setup.srv.port) as client:
        # Only the held stream's window shuts, not the connection's.
        client.open_connection_window(1 << 30)
        down = client.request("GET", "/held-download")
        client.holding.add(down)
        up, sending = await start_upload(client)
        await check_upload_held(setup, client, up)
        await check_download_held(setup, client, down)

        same = await client.get("/")
        posted = client.request("POST", "/echo", [("content-length", str(len(echo)))],
                                end=False)
        await client.send_body(posted, echo)
        echoed = await client.response(posted)
        async with h2_client(setup.srv.port) as other:
            elsewhere = await other.get("/")
            upload_elsewhere = other.request("POST", "/echo",
                                             [("content-length", str(len(echo)))], end=False)
            await other.send_body(upload_elsewhere, echo)
            echoed_elsewhere = await other.response(upload_elsewhere)
        # Still held, both.
        await client.ping()
        assert client.conn.local_flow_control_window(up) == 0
        assert client.responses[down].received == WINDOW
        assert upload_held(client, up, proxy_stream(setup.srv, b"/held-upload"), setup.upload)
        held_down = proxy_stream(setup.srv, b"/held-download")
        assert held_down is not None and held_down.flow.paused_upstream is not None

        setup.upload.release.set()
        client.release_credit(down)
        await asyncio.wait_for(sending, SLOW)
        uploaded = await client.response(up, SLOW)
        downloaded = await client.response(down, SLOW)
    assert same.status == 200 and same.body == b"stable"
    assert elsewhere.status == 200 and elsewhere.body == b"stable"
    assert echoed.status == 200 and echoed.body == echo
    assert echoed_elsewhere.status == 200 and echoed_elsewhere.body == echo
    assert uploaded.status == 200 and uploaded.body == f"{SIZE} {DIGEST}".encode()
    assert downloaded.status == 200 and downloaded.received == SIZE
    assert hashlib.sha256(downloaded.body).hexdigest() == DIGEST


async def test_held_uploads_the_client_resets_give_their_connection_credit_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Body bytes a held stream has not given back are the connection's window too: when the
    stream ends (here the client resets it), the connection gets them back. A connection
    window of four stream windows (not 100) makes the loss show after a few streams."""
    monkeypatch.setattr(limits, "CONNECTION_WINDOW", 4 * WINDOW)
    echo = random.Random(7).randbytes(2 * limits.CONNECTION_WINDOW)
    async with proxy() as setup, h2_client(setup.srv.port) as client:
        held = 0  # connection credit held by the streams reset so far
        rounds = 0
        while held < limits.CONNECTION_WINDOW:
            rounds += 1
            assert rounds <= 12, held
            first = len(setup.upload.writers)
            sid, sending = await start_upload(client)
            stream = await check_upload_held(setup, client, sid, first)
            held += stream.unacked
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            client.conn.reset_stream(sid, ErrorCodes.CANCEL)
            client.flush()
            await wait_until(lambda: proxy_stream(setup.srv, b"/held-upload") is None,
                             what="the reset stream gone")
        # The connection's whole window went to streams that are gone: an upload of two
        # connection windows goes through only if their credit came back.
        posted = client.request("POST", "/echo", [("content-length", str(len(echo)))],
                                end=False)
        await client.send_body(posted, echo)
        echoed = await client.response(posted)
    assert echoed.status == 200 and echoed.body == echo
