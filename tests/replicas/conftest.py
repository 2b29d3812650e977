"""Helpers for the many-replicas tests: real `redis-server` and `prometheus` processes started
by the tests, and several in-process `Service`s sharing them.

* `require_binary(name)` — the path of a service binary. Missing: the test is skipped with the
  reason, or fails when `SPLITPROXY_REQUIRE_SERVICES=1` (CI installs them; a skip there would
  hide that the shared-state tests never ran).
* `RedisServer` / `redis_server` fixture — `redis-server` on a free 127.0.0.1 port in a tmp dir,
  no persistence; `await stop()` terminates it, `await start()` starts a new one on the same
  port (an empty Redis, as after a crash without persistence).
* `PrometheusServer` / `prometheus` fixture — started by the test with `await start(targets)`
  once the replicas' admin ports are known: 1 s scrape and evaluation interval.
* `SwitchUpstream` / `run_switch_upstreams(...)` — aiohttp upstreams that answer 500 either to
  everyone (`fail_all`) or only to requests that came through chosen replicas (`fail_behind`,
  by the proxy port in the Host header the proxy forwards). (Endpoints are not part of a
  rollout's identity: replicas listing different endpoints share one state in Redis; replicas
  on different revisions, steps or version names keep separate ones.)
* `Replica` / `run_replicas(tmp_path, configs)` — one `Service` per config (own file, own proxy
  and admin ports, no file watcher) with an admin session and /status shortcuts.
* `replica_config(...)` — route "shop" over stable + canary with a shared Redis state section.
* `judge_of(replicas)` — the one replica that judges (holds the lease), once exactly one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from integration.conftest import free_port
from rollout.conftest import (
    WAIT,
    Hit,
    Load,
    metric,
    plain,
    rollout_config,
    run_service,
    scrape,
    status,
    wait_until,
    write_config,
)

from splitproxy.control.service import Service

__all__ = [
    "WAIT",
    "Hit",
    "Load",
    "PrometheusServer",
    "RedisServer",
    "Replica",
    "SwitchUpstream",
    "canary_hits",
    "judge_of",
    "key_prefix",
    "metric",
    "plain",
    "replica_config",
    "require_binary",
    "run_replicas",
    "run_switch_upstreams",
    "status",
    "wait_until",
    "write_config",
]

REQUIRED = os.environ.get("SPLITPROXY_REQUIRE_SERVICES") == "1"
PACKAGES = {"redis-server": "redis-server", "prometheus": "prometheus"}
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


# --------------------------------------------------------------------------- service binaries


def require_binary(name: str) -> str:
    """The path of `name`; skips the test when it is missing (fails under
    SPLITPROXY_REQUIRE_SERVICES=1)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        reason = (f"{name} is not installed (apt-get install {PACKAGES.get(name, name)}); "
                  f"the multi-replica tests start their own {name}")
        if REQUIRED:
            pytest.fail(f"SPLITPROXY_REQUIRE_SERVICES=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return path


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
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _died(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n"
                                 f"{self.log_tail()}")

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
        deadline = time.monotonic() + START_TIMEOUT
        while not await self.ping():
            self._died()
            if time.monotonic() > deadline:
                await self.stop()
                raise AssertionError(f"redis-server did not answer PING within "
                                     f"{START_TIMEOUT}s:\n{self.log_tail()}")
            await asyncio.sleep(0.02)

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
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
            while True:
                try:
                    async with session.get(f"{self.url}/-/ready") as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                self._died()
                if time.monotonic() > deadline:
                    await self.stop()
                    raise AssertionError(f"prometheus not ready within {START_TIMEOUT}s:\n"
                                         f"{self.log_tail()}")
                await asyncio.sleep(0.05)

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


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(require_binary("redis-server"), tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[PrometheusServer]:
    """Not started yet: the test calls `await prometheus.start(targets)`; stopped after."""
    server = PrometheusServer(require_binary("prometheus"), tmp_path / "prometheus")
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of this test's own: replicas of other tests never see its keys."""
    return f"t{secrets.token_hex(4)}:"


# --------------------------------------------------------------------------- upstreams


@dataclass
class SwitchUpstream:
    """An aiohttp upstream answering its name (X-Served-By) with 200, or 500 when `fail_all`
    or when the request came through a proxy port in `fail_behind`."""

    name: str
    port: int = 0
    fail_all: bool = False
    fail_behind: set[int] = field(default_factory=set)
    by_proxy: Counter[int] = field(default_factory=Counter)  # requests per proxy port
    errors: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            # The proxy forwards the client's Host (127.0.0.1:<proxy port>) unchanged.
            host = request.headers.get("X-Forwarded-Host") or request.host
            _, _, port = host.rpartition(":")
            via = int(port) if port.isdigit() else 0
            self.by_proxy[via] += 1
            failing = self.fail_all or via in self.fail_behind
            if failing:
                self.errors += 1
            return web.Response(status=500 if failing else 200, text=self.name,
                                headers={"X-Served-By": self.name})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


@contextlib.asynccontextmanager
async def run_switch_upstreams(*names: str) -> AsyncIterator[dict[str, SwitchUpstream]]:
    async with contextlib.AsyncExitStack() as stack:
        ups: dict[str, SwitchUpstream] = {}
        for name in names:
            up = SwitchUpstream(name)
            runner = web.AppRunner(up.app(), access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            up.port = int(runner.addresses[0][1])
            ups[name] = up
        yield ups


# --------------------------------------------------------------------------- replicas


def replica_config(
    ups: dict[str, SwitchUpstream],
    *,
    redis: RedisServer | None,
    prefix: str = "splitproxy:",
    lease: str = "1s",
    weights: dict[str, int] | None = None,
    analysis: dict[str, Any] | None = None,
    rollout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Route "shop": stable (the baseline) and canary; rollout state in `redis` when given,
    else in a file beside the config."""
    cfg = rollout_config({n: u.url for n, u in ups.items()},
                         weights=weights or {"stable": 50, "canary": 50},
                         analysis=analysis, rollout=rollout)
    cfg["timeouts"]["drain"] = "1s"
    if redis is not None:
        cfg["state"] = {"backend": "redis", "url": redis.url, "key_prefix": prefix,
                        "lease": lease}
    return cfg


@dataclass
class Replica:
    name: str
    svc: Service
    admin: aiohttp.ClientSession

    @property
    def proxy_port(self) -> int:
        return self.svc.proxy_port

    @property
    def admin_port(self) -> int:
        return self.svc.admin_port

    async def status(self) -> dict[str, Any]:
        return await status(self.admin)

    async def rollout(self) -> dict[str, Any]:
        body = await self.status()
        shop: dict[str, Any] = body["routes"][0]["rollout"]
        return shop

    async def canary_weight(self) -> int:
        body = await self.status()
        return int(body["routes"][0]["versions"]["canary"]["effective_weight"])

    async def store(self) -> dict[str, Any]:
        body = await self.status()
        state_store: dict[str, Any] = body["state_store"]
        return state_store

    async def act(self, action: str, **query: str) -> tuple[int, dict[str, Any]]:
        async with self.admin.post(f"/routes/shop/{action}", params=query) as resp:
            return resp.status, await resp.json()

    async def readyz(self) -> int:
        async with self.admin.get("/readyz") as resp:
            await resp.read()
            return resp.status

    async def metric(self, name: str, **labels: str) -> float | None:
        return metric(await scrape(self.admin), name, **labels)


async def judge_of(replicas: list[Replica]) -> Replica:
    """The one replica that judges (holds the lease): waits until exactly one says so."""
    found: list[Replica] = []

    async def one() -> bool:
        found[:] = [r for r in replicas if (await r.rollout())["judging"]]
        return len(found) == 1

    await wait_until(one, timeout=10, what="one judging replica", interval=0.05)
    return found[0]


@contextlib.asynccontextmanager
async def run_replicas(
    tmp_path: Path, configs: Sequence[dict[str, Any]]
) -> AsyncIterator[list[Replica]]:
    """One Service per config, started one after the other (each in `tmp_path/rN/`); every
    one still running is stopped on exit (drain 1 s)."""
    async with contextlib.AsyncExitStack() as stack:
        replicas = []
        for i, cfg in enumerate(configs):
            path = tmp_path / f"r{i}" / "config.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_config(path, cfg)
            svc = await stack.enter_async_context(run_service(path, watch=False))
            session = await stack.enter_async_context(aiohttp.ClientSession(
                base_url=f"http://127.0.0.1:{svc.admin_port}",
                timeout=aiohttp.ClientTimeout(total=WAIT)))
            replicas.append(Replica(f"r{i}", svc, session))
        yield replicas


def canary_hits(hits: Sequence[Hit]) -> list[Hit]:
    return [h for h in hits if h.served_by == "canary"]
