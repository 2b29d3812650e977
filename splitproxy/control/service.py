"""One splitproxy process: data plane, control plane and admin API, started and stopped
together; `splitproxy run` is `serve()`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from splitproxy.config import logformat
from splitproxy.config.models import load
from splitproxy.config.tls import listeners_text
from splitproxy.control.admin import bound_port, start_admin
from splitproxy.control.adminguard import AdminGuard
from splitproxy.control.clock import SYSTEM, Clock
from splitproxy.control.controller import Controller
from splitproxy.dataplane.heap import freeze_startup_heap
from splitproxy.dataplane.plane import DataPlane
from splitproxy.dataplane.server import ProxyServer
from splitproxy.dataplane.workers import WorkerPool

log = logging.getLogger("splitproxy.control.service")
T = TypeVar("T")


class Service:
    def __init__(self, config_path: Path | str, *, watch: bool = True, workers: int = 1,
                 clock: Clock = SYSTEM) -> None:
        self.path = Path(config_path)
        self.watch = watch
        config = load(self.path)
        self.guard = AdminGuard(config.admin, self.path)  # refuses an open admin API
        self.proxy: DataPlane = (
            ProxyServer(config) if workers == 1 else WorkerPool(config, workers))
        self.controller = Controller(self.path, config, self.proxy, clock=clock,
                                     guard=self.guard)
        self._admin: web.AppRunner | None = None

    @property
    def proxy_port(self) -> int:
        return self.proxy.port

    @property
    def admin_port(self) -> int:
        assert self._admin is not None
        return bound_port(self._admin)

    async def start(self) -> None:
        """Raises ListenError when a listener cannot bind (everything started is stopped)."""
        config = self.controller.config
        routing = await self.controller.prepare()
        try:
            await _listening(self.proxy.start(routing), "listen",
                             listeners_text(config.listen))
            self._admin = await _listening(start_admin(self.controller, self.guard),
                                           "admin.listen", config.admin.listen)
        except BaseException:
            await self.stop(drain=0.0)
            raise
        await self.controller.start(watch=self.watch)
        log.info("admin API on %s", self.controller.config.admin.listen)

    async def stop(self, drain: float | None = None) -> None:
        """Graceful: /readyz turns 503 at once, in-flight requests finish, then all closes."""
        await self.controller.stop()
        await self.proxy.stop(drain)
        if self._admin is not None:
            await self._admin.cleanup()


class ListenError(Exception):
    """A listener could not bind: the port is taken, the address is not this machine's, or
    binding it needs a privilege the process lacks."""


async def _listening(start: Awaitable[T], what: str, address: str) -> T:
    try:
        return await start
    except OSError as exc:
        # asyncio's message repeats the address; the errno's text is the cause alone.
        cause = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError(f"cannot listen on {address} ({what}): {cause}") from exc


async def serve(config_path: Path, workers: int = 1,
                log_format: logformat.Format | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then drain and return the exit code. Logs are written as
    `log_format` (`--log-format`), else as the config's `logging.format`."""
    # SIGHUP means "reload" once the controller runs; until then (and in the workers, which
    # inherit this) it must not kill the process, whose default action it would be.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    service = Service(config_path, workers=workers)
    # Before anything starts: the workers take the format this process logs in.
    logformat.configure(log_format or service.controller.config.logging.format)
    # Before the start: the listener accepts before the rest of the start (and the heap's
    # freeze) is done, and a SIGTERM then must drain the requests already in flight, not end
    # the process at once (its default action). One that comes during the start stops the
    # service as soon as it has started.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    freeze_startup_heap()  # the control plane's, and with one worker the data plane's
    await stop.wait()
    log.info("shutting down: draining for up to %.1fs",
             service.controller.config.timeouts.drain)
    await service.stop()
    return 0


def run_loop(main: object) -> int:
    """Run a coroutine on uvloop."""
    import uvloop

    result: int = uvloop.run(main)  # type: ignore[arg-type]
    return result
