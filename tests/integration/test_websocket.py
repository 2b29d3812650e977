"""Upgrade requests are tunnelled byte for byte after the upstream's 101."""

from __future__ import annotations

import aiohttp

from tests.support.proxy import proxied
from tests.support.rawhttp import build_request, raw_client


async def test_websocket_echo_through_the_proxy() -> None:
    async with proxied() as (up, srv):
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{srv.port}/ws") as ws:
                await ws.send_str("hello")
                assert (await ws.receive(timeout=5)).data == "hello"
                payload = bytes(range(256)) * 300  # larger than one read, all byte values
                await ws.send_bytes(payload)
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.BINARY
                assert msg.data == payload
                for i in range(20):
                    await ws.send_str(f"m{i}")
                assert [(await ws.receive(timeout=5)).data for _ in range(20)] == [
                    f"m{i}" for i in range(20)
                ]
                await ws.close()
        assert srv.stats.get("shop", "stable").responses.get(101) == 1


async def test_upgrade_response_passes_101_and_upgrade_headers() -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            await c.send(
                build_request(
                    "GET",
                    "/ws",
                    {
                        "Connection": "Upgrade",
                        "Upgrade": "websocket",
                        "Sec-WebSocket-Version": "13",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    },
                )
            )
            head = await c.read_head()
            assert head.status == 101
            assert (head.header("upgrade") or "").lower() == "websocket"
            assert "upgrade" in (head.header("connection") or "").lower()
            assert head.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
            # an unmasked client frame is a protocol error for the upstream, a masked one is fine:
            # send a masked text frame "hi" and expect the echo, unmasked, byte for byte
            mask = b"\x01\x02\x03\x04"
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(b"hi"))
            await c.send(b"\x81\x82" + mask + masked)
            echo = await c.reader.readexactly(4)
            assert echo == b"\x81\x02hi"
