"""Timeouts on slow clients and graceful shutdown, in-process and through the CLI with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from splitproxy.config.models import Config
from splitproxy.dataplane.server import ProxyServer
from tests.support.configs import proxy_config, route
from tests.support.ports import accepts, free_port, refuses
from tests.support.processes import wait_ready
from tests.support.proxy import run_proxy
from tests.support.rawhttp import RawClient, build_request, get, raw_client
from tests.support.upstream import run_upstream
from tests.support.waiting import wait_until


def assert_cut(data: bytes) -> None:
    """Closed with nothing, or with a 408 at most."""
    assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:200]


async def test_slow_header_is_cut_at_client_header_timeout_and_others_are_served() -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], timeouts={"client_header": "500ms"})
        async with run_proxy(cfg) as srv, raw_client(srv.port) as slow:
            loop = asyncio.get_running_loop()
            start = loop.time()
            await slow.send(b"GET / HTTP/1.1\r\nHost: shop.exa")
            # meanwhile other clients are served at once
            for _ in range(3):
                t0 = loop.time()
                resp = await get(srv.port, "/")
                assert resp.status == 200
                assert loop.time() - t0 < 0.3
            data = await slow.read_until_close(timeout=3)
            elapsed = loop.time() - start
        assert_cut(data)
        assert 0.4 <= elapsed <= 1.5, elapsed
        assert up.requests == 3


async def test_dripping_header_is_cut_at_client_header_timeout() -> None:
    """Bytes keep arriving, but the head as a whole must be complete within client_header."""
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], timeouts={"client_header": "500ms"})
        async with run_proxy(cfg) as srv, raw_client(srv.port) as slow:

            async def drip(c: RawClient) -> None:
                await c.send(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n")
                with contextlib.suppress(ConnectionError):
                    for i in range(40):
                        await c.send(b"X-%d: y\r\n" % i)
                        await asyncio.sleep(0.1)

            loop = asyncio.get_running_loop()
            start = loop.time()
            task = asyncio.create_task(drip(slow))
            try:
                data = await slow.read_until_close(timeout=3)
                elapsed = loop.time() - start
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        assert_cut(data)
        assert 0.4 <= elapsed <= 1.5, elapsed
        assert up.requests == 0


async def test_stop_lets_in_flight_request_finish_and_refuses_new_connections() -> None:
    async with run_upstream("stable") as up:
        srv = ProxyServer(Config.model_validate(proxy_config([route({"stable": up.url})])))
        await srv.start()
        stopping: asyncio.Task[None] | None = None
        try:
            async with raw_client(srv.port) as c:
                await c.send(build_request("GET", "/slow?delay=1"))
                await wait_until(lambda: up.in_flight == 1, what="request at upstream")
                loop = asyncio.get_running_loop()
                start = loop.time()
                stopping = asyncio.create_task(srv.stop(drain=5.0))
                await wait_until(lambda: refuses(srv.port), what="new connections refused")
                resp = await c.read_response()
                assert (resp.status, resp.body) == (200, b"stable")
                await asyncio.wait_for(stopping, 3)
                # stop returns once the last request is done, not after the whole drain period
                assert loop.time() - start < 2.0
                assert await c.is_closed(timeout=1)
        finally:
            if stopping is None:
                await srv.stop(drain=0)
            elif not stopping.done():
                stopping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stopping


async def test_stop_closes_idle_keepalive_connections_promptly() -> None:
    async with run_upstream("stable") as up:
        srv = ProxyServer(Config.model_validate(proxy_config([route({"stable": up.url})])))
        await srv.start()
        async with raw_client(srv.port) as c:
            assert (await c.request("GET", "/")).status == 200
            loop = asyncio.get_running_loop()
            start = loop.time()
            await asyncio.wait_for(srv.stop(drain=5.0), 3)
            assert loop.time() - start < 1.0
            assert await c.is_closed(timeout=1)


async def test_stop_cuts_requests_still_running_after_the_drain_period() -> None:
    async with run_upstream("stable") as up:
        srv = ProxyServer(Config.model_validate(proxy_config([route({"stable": up.url})])))
        await srv.start()
        async with raw_client(srv.port) as c:
            await c.send(build_request("GET", "/slow?delay=4"))
            await wait_until(lambda: up.in_flight == 1, what="request at upstream")
            loop = asyncio.get_running_loop()
            start = loop.time()
            await asyncio.wait_for(srv.stop(drain=0.5), 3)
            assert 0.4 <= loop.time() - start < 1.5
            data = await c.read_until_close(timeout=1)
        assert not data.startswith(b"HTTP/1.1 200"), data[:200]


async def test_sigterm_drains_in_flight_request_and_exits_zero(tmp_path: Path) -> None:
    async with run_upstream("stable") as up:
        port = free_port()
        cfg = proxy_config(
            [route({"stable": up.url})],
            listen=f"127.0.0.1:{port}",
            admin={"listen": f"127.0.0.1:{free_port()}"},
        )
        path = tmp_path / "splitproxy.yaml"
        path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        log = (tmp_path / "proxy.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "splitproxy",
            "run",
            "-c",
            str(path),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await wait_ready(lambda: accepts(port), exited=lambda: proc.returncode,
                             log=tmp_path / "proxy.log", what="the proxy to accept connections")
            async with raw_client(port) as c:
                await c.send(build_request("GET", "/slow?delay=1.5"))
                await wait_until(lambda: up.in_flight == 1, what="request at upstream")
                proc.send_signal(signal.SIGTERM)
                await wait_until(lambda: refuses(port), what="new connections refused")
                resp = await c.read_response()
                assert (resp.status, resp.body) == (200, b"stable")
            code = await asyncio.wait_for(proc.wait(), 10)
            assert code == 0, (tmp_path / "proxy.log").read_text()[-2000:]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            log.close()

