"""Ports on 127.0.0.1: free ones for servers a test starts itself, refusing ones for dead
endpoints, and a check that something listens."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

# `free_port`: one copy for the tests and the load tests (a port free a moment ago, never
# one this process was handed before: the kernel may give two binds in a row the same port).
from loadtests.harness import free_port as free_port

from .waiting import WAIT


@contextlib.contextmanager
def refusing_ports() -> Iterator[Callable[[], int]]:
    """Makes ports where connecting is refused, until the block ends.

    Each is a socket bound and never listening, held until the end: Linux answers a
    connection to it with a reset, and no other socket can take the port meanwhile (the
    holder has no SO_REUSEADDR, and a bound port is never chosen as an ephemeral one). A
    port that was merely free a moment ago can be taken by another process's listener, or
    by an outgoing connection that then connects to itself (TCP simultaneous open).
    """
    held: list[socket.socket] = []

    def make() -> int:
        sock = socket.socket()
        held.append(sock)
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

    try:
        yield make
    finally:
        for sock in held:
            sock.close()


async def accepts(port: int) -> bool:
    """True when a connection to the port is accepted (closed again at once)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def refuses(port: int) -> bool:
    """True when a connection to the port is refused (nothing listens)."""
    return not await accepts(port)
