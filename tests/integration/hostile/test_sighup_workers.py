"""Threat (operational): a SIGHUP sent to the whole process group (`kill -HUP -PGID`, as some
supervisors and terminals do) killed every worker of `splitproxy run --workers N` and cut the
requests in flight.

Rule: SIGHUP means "reload" to the control plane; workers ignore it (they block it from before
they start, so there is no window where it kills them). nginx: the master reloads on SIGHUP;
its workers do not act on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

from tests.support.configs import proxy_config, route
from tests.support.ports import free_port
from tests.support.rawhttp import raw_client
from tests.support.upstream import run_upstream
from tests.support.waiting import wait_until


async def _wait_reloaded(admin_port: int) -> None:
    async with aiohttp.ClientSession() as session:

        async def reloaded() -> bool:
            async with session.get(f"http://127.0.0.1:{admin_port}/status") as resp:
                return bool((await resp.json())["config"]["last_reload"]["result"] == "success")

        await wait_until(reloaded, 10, "the SIGHUP reload to finish", interval=0.05)


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


async def test_sighup_to_the_process_group_keeps_workers_and_requests_in_flight(
        tmp_path: Path) -> None:
    async with run_upstream("stable") as up:
        port, admin_port = free_port(), free_port()
        cfg = proxy_config([route({"stable": up.url})], listen=f"127.0.0.1:{port}",
                           admin={"listen": f"127.0.0.1:{admin_port}"})
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = (tmp_path / "log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "splitproxy", "run", "-c", str(path), "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        def text() -> str:
            return (tmp_path / "log").read_text()

        try:
            # Logged once everything runs, the controller's SIGHUP handler included (before
            # it, a SIGHUP is ignored, not fatal).
            await wait_until(lambda: "admin API on" in text(), 30, "start-up")
            # Workers, multiprocessing's resource tracker and the config parser's fork server.
            children = _children(proc.pid)
            assert len(children) >= 3
            async with contextlib.AsyncExitStack() as stack:
                conns = [await stack.enter_async_context(raw_client(port)) for _ in range(4)]
                for c in conns:
                    await c.send(b"GET /slow?delay=1.5 HTTP/1.1\r\nHost: h\r\n\r\n")
                await wait_until(lambda: up.in_flight == 4, 10, "requests in flight")
                os.killpg(proc.pid, signal.SIGHUP)
                answers = await asyncio.gather(*(c.read_response(timeout=10) for c in conns))
                assert [a.status for a in answers] == [200] * 4
            await wait_until(lambda: "SIGHUP: reloading" in text(), 10, "reload")
            assert proc.poll() is None
            await _wait_reloaded(admin_port)  # the forced reload ran (in a parse child)
            assert _children(proc.pid) == children  # the same processes: none died
            assert "died" not in text()
            async with raw_client(port) as c:
                assert (await c.request("GET", "/")).status == 200
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
            finally:
                log.close()
        assert code == 0
