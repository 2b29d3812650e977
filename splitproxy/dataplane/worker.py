"""Inside a worker process of `splitproxy run --workers N`: one `ProxyServer` on the shared
port (SO_REUSEPORT), driven by the control process through `messages` on a pipe."""

from __future__ import annotations

import asyncio
import signal
from multiprocessing.connection import Connection

from splitproxy.config import logformat
from splitproxy.dataplane.heap import freeze_startup_heap
from splitproxy.dataplane.messages import Ready, Report, Stop, Stopped, Table
from splitproxy.dataplane.procstats import Sampler
from splitproxy.dataplane.server import ProxyServer

REPORT_INTERVAL = 0.25


def worker_main(conn: Connection, first: Table, index: int, log_level: int,
                log_format: logformat.Format = "text") -> None:
    import uvloop

    logformat.configure(log_format, log_level, worker=index)  # escapes too (logsafe)
    # Ctrl-C or SIGHUP sent to the whole process group: the parent decides when we stop and
    # reloads on SIGHUP; a worker ignores both (SIGHUP is blocked until now, see
    # WorkerPool._spawn).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    uvloop.run(_serve(conn, first))


async def _serve(conn: Connection, first: Table) -> None:
    loop = asyncio.get_running_loop()
    config = first.config
    server = ProxyServer(config, reuse_port=True)
    await server.start(first.build())
    stop: asyncio.Future[float] = loop.create_future()
    usage = Sampler()  # at most once a second, whatever the report interval

    def on_message() -> None:
        try:
            while conn.poll():
                message = conn.recv()
                if isinstance(message, Table):
                    server.reconfigure(message.config, message.build())
                elif isinstance(message, Stop) and not stop.done():
                    stop.set_result(message.drain)
        except (EOFError, OSError):
            if not stop.done():
                stop.set_result(config.timeouts.drain)  # the control plane is gone

    def report() -> None:
        try:
            conn.send(Report.of(server.stats, server.endpoint_health(), usage.sample()))
        except (OSError, ValueError):
            pass

    def on_sigterm() -> None:
        if not stop.done():
            stop.set_result(config.timeouts.drain)

    loop.add_reader(conn.fileno(), on_message)
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    freeze_startup_heap()
    conn.send(Ready(server.port))
    while not stop.done():
        report()
        await asyncio.wait([stop], timeout=REPORT_INTERVAL)
    await server.stop(stop.result())
    report()
    loop.remove_reader(conn.fileno())
    try:
        conn.send(Stopped())
    except (OSError, ValueError):
        pass
