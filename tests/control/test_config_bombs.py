"""Threat: a config file that makes parsing stall the proxy or blow its memory (an alias
bomb, a huge file, deep nesting), and errors that escape the reload's accounting.

Rules: a config over 1 MiB, nested deeper than 64 levels, or expanding (aliases included) to
more than 200 000 nodes is refused with a `file:line` error, by `splitproxy check` and by a
reload alike; a reload from the watcher or SIGHUP parses in a child process under a time
limit, so even a slow parse leaves the serving loop free; the old config keeps serving.
Measured before (issue 9): a 1.35 KB alias bomb froze the proxy for 19 s, a 12 MB config for
24 s, and a 5000-deep YAML raised RecursionError past the reload's error accounting.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from splitproxy.cli import main as cli
from splitproxy.config import isolate as confproc
from splitproxy.control.service import Service
from tests.support.configs import proxy_config, route
from tests.support.rawhttp import raw_client
from tests.support.service import running_service
from tests.support.upstream import run_upstream
from tests.support.waiting import wait_until

BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9 if prev else ['lol'] * 9)}]\n"
    for prev, name in zip([None, *"abcdefgh"], "abcdefghi", strict=True)
)


def _bad_files(good: str) -> dict[str, tuple[str, str]]:
    """name -> (file text, the error it must give)."""
    return {
        "alias bomb": (good + BOMB * 3,  # ~1.35 KB
                       "expands to more than 200000 nodes"),
        "12 MB": (good + "# padding\n" * (1_200_000), "larger than 1048576 bytes"),
        "5000 deep": (good + "x: " + "[" * 5000 + "]" * 5000 + "\n", "deeper than 64 levels"),
    }


async def _latencies_while(port: int, done: asyncio.Event) -> list[float]:
    loop = asyncio.get_running_loop()
    out: list[float] = []
    async with raw_client(port) as c:
        while not done.is_set():
            start = loop.time()
            assert (await c.request("GET", "/")).status == 200
            out.append(loop.time() - start)
    return out


def reload_errors(svc: Service, n: int) -> bool:
    return svc.controller.reloads["error"] == n


async def test_bad_configs_are_refused_with_file_line_while_serving_goes_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})])
        good = yaml.safe_dump(cfg)
        async with running_service(tmp_path, cfg) as (svc, path):
            for n, (name, (text, error)) in enumerate(_bad_files(good).items(), start=1):
                done = asyncio.Event()
                measuring = asyncio.create_task(_latencies_while(svc.proxy_port, done))
                await asyncio.sleep(0.2)
                path.write_text(text)
                await wait_until(partial(reload_errors, svc, n), 10.0, f"reload error for {name}")
                done.set()
                latencies = await measuring
                message = svc.controller.last_error or ""
                assert message.startswith(f"{path}:") and error in message, (name, message)
                assert len(latencies) > 10 and max(latencies) < 0.5, (name, max(latencies))
                # `splitproxy check` says the same.
                assert cli.main(["check", "-c", str(path)]) == 1
                assert message in capsys.readouterr().err
            assert svc.controller.reloads["success"] == 0
            assert svc.controller.generation() == 1


def _slow_config(cfg: dict[str, Any], routes: int) -> str:
    """A valid YAML file that takes the parser a while and fails validation at its end."""
    many = [route({"stable": "http://127.0.0.1:1"}, name=f"r{i}") for i in range(routes)]
    return yaml.safe_dump({**cfg, "routes": [*cfg["routes"], *many]}) + "bogus_key: 1\n"


async def test_a_slow_parse_does_not_stall_the_proxy(tmp_path: Path) -> None:
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})])
        # Made before measuring: dumping it is itself a slow (pure-Python) YAML job, and
        # would stall this test's own loop, which also runs the proxy.
        slow = _slow_config(cfg, 1500)  # ~300 KB
        async with running_service(tmp_path, cfg) as (svc, path):
            done = asyncio.Event()
            measuring = asyncio.create_task(_latencies_while(svc.proxy_port, done))
            await asyncio.sleep(0.2)
            loop = asyncio.get_running_loop()
            start = loop.time()
            path.write_text(slow)
            await wait_until(lambda: svc.controller.reloads["error"] == 1, 30.0, "reload")
            took = loop.time() - start
            done.set()
            latencies = await measuring
            assert "bogus_key: unknown key" in (svc.controller.last_error or "")
            # Served all along, and never waited for the parse.
            assert max(latencies) < min(0.5, took / 2), (max(latencies), took)


async def test_a_parse_over_the_time_limit_is_a_reload_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confproc, "PARSE_TIMEOUT", 0.05)
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})])
        slow = _slow_config(cfg, 1500)
        async with running_service(tmp_path, cfg) as (svc, path):
            path.write_text(slow)
            await wait_until(lambda: svc.controller.reloads["error"] == 1, 10.0, "reload")
            assert "parsing took longer than 0.05s" in (svc.controller.last_error or "")
            assert isinstance(svc, Service) and svc.controller.generation() == 1
