"""The listening sockets, accepted in batches.

uvloop's `create_server` (libuv 1.52) accepts one connection per turn of the event loop
(strace: one `accept4` per `epoll_wait`). Under load a turn takes tens of milliseconds (every
ready connection is read and answered in it), so a burst of new clients waits in the
kernel's accept queue: at 512 connections opened at once by `wrk -t2`, the last ones were
accepted 1-2 s after they connected, and their first requests showed as a p99 of 1.1-1.4 s
and wrk timeouts, while no request took more than 50 ms once accepted. Here the socket is
watched with `add_reader` and each readiness accepts up to `ACCEPT_BATCH` connections, each
handed to the loop with `connect_accepted_socket` (TLS included: the handshake runs there).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from splitproxy.dataplane.http.local import LOCAL_ERRNOS

log = logging.getLogger("splitproxy.dataplane.acceptor")

# Connections accepted per readiness of a listening socket: enough for a burst of clients in
# one turn of the loop, few enough that the connections already open are not kept waiting.
ACCEPT_BATCH = 128
# Out of descriptors or memory: stop accepting for this long, then try again (asyncio's
# selector loop waits 1 s; libuv accepts and closes the connection at once).
ACCEPT_RETRY_DELAY = 0.2


class Acceptor:
    """The listening sockets of one listener address; `close()` stops accepting."""

    __slots__ = ("loop", "factory", "ssl", "handshake_timeout", "sockets", "_handshakes",
                 "_closed")

    def __init__(self, loop: asyncio.AbstractEventLoop, factory: Callable[[Any], asyncio.Protocol],
                 ssl_context: ssl.SSLContext | None, handshake_timeout: float | None) -> None:
        """`factory(peer)`: the protocol of a connection from `peer` (the address `accept`
        returned: the transport need not be asked, which makes a socket object for it)."""
        self.loop = loop
        self.factory = factory
        self.ssl = ssl_context
        self.handshake_timeout = handshake_timeout if ssl_context is not None else None
        self.sockets: list[socket.socket] = []
        self._handshakes: set[asyncio.Task[object]] = set()  # connections not yet made
        self._closed = False

    async def listen(self, host: str, port: int, backlog: int, reuse_port: bool) -> None:
        """Bind every address `host` resolves to (as `create_server`); raises OSError."""
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                            flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:  # N workers on one port, the kernel spreads the clients
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:  # `::` and `0.0.0.0` are two sockets
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
        except BaseException:
            self.close()
            raise
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while in the accept queue
            except OSError as exc:
                self._pause(sock, exc)
                return
            conn.setblocking(False)
            # The coroutine calls its factory when the task first runs, a turn later.
            task: asyncio.Task[object] = self.loop.create_task(self.loop.connect_accepted_socket(
                _returning(self.factory(peer)), conn, ssl=self.ssl,
                ssl_handshake_timeout=self.handshake_timeout))
            self._handshakes.add(task)
            task.add_done_callback(self._made)

    def _made(self, task: asyncio.Task[object]) -> None:
        self._handshakes.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # A TLS handshake that failed or timed out: the client's problem, not ours.
            log.debug("connection not made: %r", exc)

    def _pause(self, sock: socket.socket, exc: OSError) -> None:
        """Accepting failed for a reason of this machine (out of descriptors): the socket
        would be ready again at once, a busy loop; wait a moment instead."""
        if exc.errno in LOCAL_ERRNOS or exc.errno == errno.EPERM:
            log.warning("cannot accept connections for now: %s; trying again in %gs",
                        exc.strerror or exc, ACCEPT_RETRY_DELAY)
        else:
            log.error("accept failed: %r; trying again in %gs", exc, ACCEPT_RETRY_DELAY)
        self.loop.remove_reader(sock.fileno())
        self.loop.call_later(ACCEPT_RETRY_DELAY, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        if not self._closed:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting; handshakes in progress end (connections made stay)."""
        self._closed = True
        for sock in self.sockets:
            if sock.fileno() >= 0:
                self.loop.remove_reader(sock.fileno())
                sock.close()
        for task in list(self._handshakes):
            task.cancel()


def _returning(protocol: asyncio.Protocol) -> Callable[[], asyncio.Protocol]:
    return lambda: protocol
