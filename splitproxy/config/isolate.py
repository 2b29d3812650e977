"""Config parsing off the serving loop: each reload parses and validates in a child process
with a time limit.

A thread would not do: parsing is pure Python and holds the GIL, so a slow parse (a 1 MiB
file takes seconds) would starve the event loop that proxies requests (one worker) or runs the
control plane (several). The child is forked from multiprocessing's fork server (one
single-threaded process, started once, with the config module already imported), so a reload
costs a fork, not an interpreter start. A child that takes longer than the limit is killed and
the reload fails with a `file:line` error like any other bad edit.

As with every multiprocessing start method but fork, a program that embeds splitproxy must
guard its own entry point (`if __name__ == "__main__":`): the fork server imports the main
module. `splitproxy` and `python -m splitproxy` do.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from splitproxy.config.models import Config, ConfigError, load

PARSE_TIMEOUT = 20.0  # the largest allowed file (1 MiB) parses in ~5 s on a busy core

_ctx = multiprocessing.get_context("forkserver")
_ctx.set_forkserver_preload(["splitproxy.config.models"])


def warm() -> None:
    """Start the fork server now (blocking: call it off the loop), so the first reload does
    not wait for an interpreter to start."""
    from multiprocessing import forkserver

    with _sighup_blocked():
        forkserver.ensure_running()


@contextlib.contextmanager
def _sighup_blocked() -> Iterator[None]:
    # SIGHUP means "reload" to this process; sent to the whole process group it must not kill
    # the fork server or a parse in progress. Both inherit the mask of the thread that
    # starts them, and keep it.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _start(process: BaseProcess) -> None:
    with _sighup_blocked():
        process.start()


def _child(path: str, conn: Connection) -> None:
    try:
        conn.send(("ok", load(path)))
    except ConfigError as exc:
        conn.send(("error", exc.errors))
    except Exception as exc:  # a parser bug must still come back as a reload error
        conn.send(("error", [f"{path}:1: cannot parse config: {type(exc).__name__}: {exc}"]))
    finally:
        conn.close()


async def load_in_child(path: Path, timeout: float | None = None) -> Config:
    """`config.load(path)` in a child process; raises ConfigError (also on a timeout)."""
    timeout = PARSE_TIMEOUT if timeout is None else timeout
    loop = asyncio.get_running_loop()
    ours, theirs = _ctx.Pipe(duplex=False)
    process = _ctx.Process(target=_child, args=(str(path), theirs), daemon=True,
                           name="splitproxy-config-parse")
    # Starting talks to the fork server over a local socket (the first time, starts it):
    # quick, but blocking, so not on the loop.
    await loop.run_in_executor(None, _start, process)
    theirs.close()
    answer: asyncio.Future[tuple[str, object]] = loop.create_future()

    def readable() -> None:
        loop.remove_reader(ours.fileno())
        try:
            answer.set_result(ours.recv())
        except (EOFError, OSError) as exc:
            answer.set_exception(exc)

    loop.add_reader(ours.fileno(), readable)
    try:
        kind, payload = await asyncio.wait_for(answer, timeout)
    except TimeoutError:
        raise ConfigError([f"{path}:1: parsing took longer than {timeout:g}s: refused"]) from None
    except (EOFError, OSError):
        raise ConfigError([f"{path}:1: the config parser died (exit code "
                           f"{process.exitcode})"]) from None
    finally:
        if not answer.done():
            loop.remove_reader(ours.fileno())
        ours.close()
        if process.is_alive():
            process.kill()
        await loop.run_in_executor(None, process.join, 5.0)
        process.close()
    if kind == "ok" and isinstance(payload, Config):
        return payload
    raise ConfigError(list(payload) if isinstance(payload, list) else [str(payload)])
