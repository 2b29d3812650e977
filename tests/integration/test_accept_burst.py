"""Many clients connecting at once: accepted in batches (`dataplane.http.acceptor`), every
one served; the listening socket still binds as before (SO_REUSEPORT workers, a port in use).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import socket
from collections.abc import Iterator

import pytest

from splitproxy.config.models import Config
from splitproxy.dataplane.http.acceptor import ACCEPT_BATCH, Acceptor
from splitproxy.dataplane.server import ProxyServer
from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.upstream import run_upstream, run_upstream_process
from tests.support.waiting import WAIT

BURST = 512
GET = b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n"


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Room for the burst in this process: its clients, the proxy's side of them and the
    upstream connections (the soft RLIMIT_NOFILE is often 1024; raised up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * BURST
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _one(port: int, opened: asyncio.Event, go: asyncio.Event) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    try:
        opened.set()
        await go.wait()  # every connection is open before any request is sent
        writer.write(GET)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT * 2)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        return head + await asyncio.wait_for(reader.readexactly(length), WAIT)
    finally:
        writer.close()


@pytest.mark.usefixtures("descriptors")
async def test_512_connections_opened_at_once_are_all_served() -> None:
    async with run_upstream_process("stable") as urls:
        async with run_proxy(proxy_config([route({"stable": urls["stable"]})])) as srv:
            go = asyncio.Event()
            opened = [asyncio.Event() for _ in range(BURST)]
            clients = [asyncio.create_task(_one(srv.port, o, go)) for o in opened]
            await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), WAIT * 2)
            go.set()
            answers = await asyncio.gather(*clients)
    assert [a[:12] for a in answers] == [b"HTTP/1.1 200"] * BURST
    assert all(a.endswith(b"stable stable-1\n") for a in answers)


async def test_a_full_accept_queue_is_taken_in_a_few_turns_of_the_loop() -> None:
    made: list[asyncio.Protocol] = []

    def factory(peer: object) -> asyncio.Protocol:
        made.append(asyncio.Protocol())
        return made[-1]

    loop = asyncio.get_running_loop()
    acceptor = Acceptor(loop, factory, None, None)
    await acceptor.listen("127.0.0.1", 0, 1024, reuse_port=False)
    port = acceptor.sockets[0].getsockname()[1]
    queued = 2 * ACCEPT_BATCH
    clients = []
    try:
        # Connected without a turn of the loop: all of them wait in the accept queue.
        for _ in range(queued):
            clients.append(socket.create_connection(("127.0.0.1", port)))
        for _ in range(4):  # one accept per turn (libuv's own accept) would take `queued`
            await asyncio.sleep(0)
        assert len(made) == queued
    finally:
        acceptor.close()
        for c in clients:
            c.close()


async def test_two_servers_with_reuse_port_share_one_port() -> None:
    async with run_upstream("stable") as up:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        cfg = Config.model_validate(
            proxy_config([route({"stable": up.url})], listen=f"127.0.0.1:{port}"))
        first, second = ProxyServer(cfg, reuse_port=True), ProxyServer(cfg, reuse_port=True)
        await first.start()
        try:
            await second.start()
            try:
                assert first.port == second.port == port
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(GET)
                assert (await asyncio.wait_for(reader.readline(), WAIT)).startswith(
                    b"HTTP/1.1 200")
                writer.close()
            finally:
                await second.stop(drain=0.0)
        finally:
            await first.stop(drain=0.0)


async def test_a_port_in_use_is_an_oserror_and_nothing_stays_bound() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = ProxyServer(Config.model_validate(
            proxy_config([route({"stable": "http://127.0.0.1:9"})], listen=f"127.0.0.1:{port}")))
        with pytest.raises(OSError) as caught:
            await srv.start()
        assert caught.value.errno == errno.EADDRINUSE
        with contextlib.suppress(RuntimeError):
            assert srv.connections == set()
