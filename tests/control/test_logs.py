"""Logs fit for production, from a real `splitproxy run` process: JSON lines that parse
(`--log-format json`, `logging.format: json`, the flag winning), and a config watcher that a
log file in the config's own folder cannot drive into a loop."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from splitproxy.config.logformat import TEXT, JsonFormatter, TextFormatter
from splitproxy.control.reload import reached_through
from tests.support.configs import proxy_config, route
from tests.support.ports import free_port
from tests.support.service import write_config
from tests.support.upstream import run_upstream
from tests.support.waiting import WAIT, wait_until

ACTION = {"X-Splitproxy-Action": "1"}
WORKER_IDS = (0, 1)  # `--workers 2`: the `worker` field of their log records
STEPS = {"steps": [{"set_weight": 10}, {"pause": {}}, {"set_weight": 100}]}


def config(upstream: str, weights: dict[str, int] | None = None, **sections: Any,
           ) -> dict[str, Any]:
    r = route({"stable": upstream, "canary": upstream}, weights or {"stable": 90, "canary": 10})
    r["rollout"] = STEPS
    return proxy_config([r], listen=f"127.0.0.1:{free_port()}",
                        admin={"listen": f"127.0.0.1:{free_port()}"}, **sections)


class Proxy:
    def __init__(self, proc: asyncio.subprocess.Process, admin: str, log: Path) -> None:
        self.proc = proc
        self.admin = admin
        self.log = log
        self.session = aiohttp.ClientSession(base_url=admin, headers=ACTION,
                                             timeout=aiohttp.ClientTimeout(total=WAIT))

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(path) as resp:
            return resp.status, await resp.text()

    async def generation(self) -> int:
        status, body = await self.get("/status")
        assert status == 200, body
        return int(json.loads(body)["config"]["generation"])

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextlib.asynccontextmanager
async def splitproxy_run(path: Path, log: Path, *args: str,
                         before: tuple[str, ...] = ()) -> AsyncIterator[Proxy]:
    """`python -m splitproxy BEFORE run -c PATH ARGS` with stderr (and stdout) into `log`; ready
    (/readyz 200) when yielded; SIGTERM and exit 0 after."""
    cfg = yaml.safe_load(path.read_text())
    admin = f"http://{cfg['admin']['listen']}"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "splitproxy", *before, "run", "-c", str(path), *args,
            stdout=out, stderr=out)
    proxy = Proxy(proc, admin, log)
    try:
        async def ready() -> bool:
            assert proc.returncode is None, f"exited with {proc.returncode}:\n{proxy.tail()}"
            with contextlib.suppress(aiohttp.ClientError):
                return (await proxy.get("/readyz"))[0] == 200
            return False

        await wait_until(ready, 20, "splitproxy run ready")
        yield proxy
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0, proxy.tail()
    finally:
        await proxy.session.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Every line of `log` as a JSON object (fails on the first that is not one)."""
    out = []
    for n, line in enumerate(log.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise AssertionError(f"{log.name}:{n} is not JSON: {line!r}") from exc
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        out.append(record)
    return out


# --------------------------------------------------------------------------- JSON


async def test_json_logs_parse_one_object_per_line(tmp_path: Path) -> None:
    async with run_upstream("stable") as up:
        path = tmp_path / "config.yaml"
        good = config(up.url)
        write_config(path, good)
        log = tmp_path / "out" / "splitproxy.log"
        log.parent.mkdir()
        async with splitproxy_run(path, log, "--log-format", "json", "--workers", "2") as p:
            # An operator's abort (INFO, then the phase change at WARNING), with a reason
            # that tries to forge a line; a refused reload (ERROR).
            async with p.session.post("/routes/shop/abort",
                                      params={"reason": 'bad "canary"\\n{"level":"INFO"}'}
                                      ) as resp:
                assert resp.status == 200, await resp.text()
            path.write_text("routes: [\n")

            async def refused() -> bool:
                _, body = await p.get("/status")
                return bool(json.loads(body)["config"]["last_reload"]["result"] == "error")

            await wait_until(refused, WAIT, "the bad reload reported")
    records = json_lines(log)
    levels = {r["level"] for r in records}
    assert {"INFO", "WARNING", "ERROR"} <= levels, levels
    assert any(r.get("worker") == 1 and r["logger"].startswith("splitproxy.dataplane")
               for r in records), "the workers log JSON too"
    aborted = [r for r in records if r["level"] == "WARNING" and "->aborted" in r["message"]]
    assert aborted and aborted[0]["route"] == "shop", records
    assert 'bad "canary"' in aborted[0]["message"]
    assert [r for r in records if r["level"] == "ERROR"
            and "config reload rejected" in r["message"]]
    assert all(r["time"].endswith("Z") and "T" in r["time"] for r in records)
    # Each process froze its start-up heap once it served (`dataplane.heap`).
    frozen = [r.get("worker") for r in records if "start-up heap frozen" in r["message"]]
    assert sorted(frozen, key=str) == sorted([None, *WORKER_IDS], key=str), frozen


async def test_the_access_log_in_json_and_in_text_from_workers_loses_no_line(
        tmp_path: Path) -> None:
    """The access log's batched lines reach stderr in either format, from every worker, and
    a SIGTERM right after the last answer loses none of them (the stop hands them over)."""
    async with run_upstream("stable") as up:
        for fmt in ("json", "text"):
            path = tmp_path / fmt / "config.yaml"
            path.parent.mkdir()
            cfg = config(up.url, logging={"format": fmt, "access_log": True})
            write_config(path, cfg)
            log = tmp_path / f"{fmt}.log"
            async with splitproxy_run(path, log, "--workers", "2"):
                async with aiohttp.ClientSession() as client:
                    for n in range(20):
                        async with client.get(f"http://{cfg['listen']}/n{n}?token=x",
                                              headers={"X-Request-Id": f"id-{n}"}) as resp:
                            assert resp.status == 200
            if fmt == "json":
                access = [r for r in json_lines(log) if r["logger"] == "splitproxy.access"]
                assert sorted(r["access"]["request_id"] for r in access) == sorted(
                    f"id-{n}" for n in range(20))
                assert all(r["access"]["path"].startswith("/n") and r["worker"] in (0, 1)
                           and f"request_id={r['access']['request_id']} " in r["message"]
                           for r in access)
            else:
                text = [ln for ln in log.read_text().splitlines()
                          if " INFO splitproxy.access[w" in ln]
                assert sorted(ln.split(" request_id=")[1].split()[0] for ln in text) == sorted(
                    f"id-{n}" for n in range(20))
                assert not any("token" in ln for ln in text)


async def test_logging_format_from_the_config_and_the_flag_wins(tmp_path: Path) -> None:
    async with run_upstream("stable") as up:
        path = tmp_path / "config.yaml"
        write_config(path, config(up.url, logging={"format": "json"}))
        as_config = tmp_path / "as-config.log"
        async with splitproxy_run(path, as_config):
            pass
        assert any("admin API on" in r["message"] for r in json_lines(as_config))
        write_config(path, config(up.url, logging={"format": "json"}))  # fresh ports
        flagged = tmp_path / "flagged.log"
        async with splitproxy_run(path, flagged, "--log-format", "text"):
            pass
        lines = flagged.read_text().splitlines()
        assert any(" INFO splitproxy.control.service: admin API on " in ln for ln in lines)
        assert not any(ln.startswith("{") for ln in lines), lines


def test_the_text_formatter_writes_what_logging_would_with_its_second_kept() -> None:
    """TextFormatter renders the date and seconds once a second: the lines are the ones
    logging.Formatter writes, at every millisecond, across second and minute boundaries."""
    ours, plain = TextFormatter(TEXT), logging.Formatter(TEXT)
    start = 1_700_000_058.0
    for created in (start, start + 0.0004, start + 0.999, start + 1.0, start + 1.5,
                    start + 2.001, start + 61.25, start + 1.7, start + 3600.5):
        record = logging.LogRecord("splitproxy.access", logging.INFO, __file__, 1, "line",
                                   None, None)
        record.created = created
        record.msecs = int((created - int(created)) * 1000) + 0.0
        assert ours.format(record) == plain.format(record), created
    assert ours.formatTime(record, "%H") == plain.formatTime(record, "%H")


def test_json_formatter_carries_extra_fields_and_keeps_a_traceback_on_one_line() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("splitproxy.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("abort route=%s", "shop",
                       extra={"route": "shop", "requests": {"canary": 40}, "path": Path("/x")})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "abort route=shop" and first["level"] == "WARNING"
    assert first["logger"] == "splitproxy.test.json"
    assert first["route"] == "shop" and first["requests"] == {"canary": 40}
    assert first["path"] == "/x"
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


# --------------------------------------------------------------------------- the watcher


def test_only_the_config_and_the_names_it_is_read_through_are_watched(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.yaml").write_text("x")
    assert reached_through(plain / "config.yaml") == {"config.yaml"}
    # The kubelet's layout for a mounted ConfigMap or projected volume.
    k8s = tmp_path / "k8s"
    (k8s / "..2026_01").mkdir(parents=True)
    (k8s / "..2026_01" / "config.yaml").write_text("x")
    (k8s / "..data").symlink_to("..2026_01")
    (k8s / "config.yaml").symlink_to("..data/config.yaml")
    assert reached_through(k8s / "config.yaml") == {"config.yaml", "..data", "..2026_01"}
    # A link that leaves the folder: only its own name.
    (tmp_path / "elsewhere.yaml").write_text("x")
    (plain / "linked.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    assert reached_through(plain / "linked.yaml") == {"linked.yaml"}


async def test_a_log_file_in_the_config_folder_starts_no_reload_loop(tmp_path: Path) -> None:
    """stderr into the config's own folder at DEBUG: every log line is a change in the
    watched directory. Two real edits, each applied once, are the signal that the watcher
    works; the log between them shows it did not chase its own writes."""
    async with run_upstream("stable") as up:
        path = tmp_path / "config.yaml"
        cfg = config(up.url)
        write_config(path, cfg)
        log = tmp_path / "splitproxy.log"  # beside the config, as `2> conf/log` does
        async with splitproxy_run(path, log, before=("--log-level", "DEBUG")) as p:
            for n, weights in ((2, {"stable": 50, "canary": 50}),
                               (3, {"stable": 0, "canary": 100})):
                cfg["routes"][0]["weights"] = weights
                write_config(path, cfg)

                async def applied(n: int = n) -> bool:
                    return await p.generation() == n

                await wait_until(applied, WAIT, f"generation {n} applied")
                assert await p.generation() == n
            # The state file is written beside the config (rollout state): not a change.
            assert (tmp_path / "config.state.json").exists()
    text = log.read_text()
    assert text.count("config generation 2 applied") == 1, text[-3000:]
    assert text.count("config generation 3 applied") == 1, text[-3000:]
    assert "change detected" not in text and "changes detected" not in text
    # One event batch per edit at most (an in-place write may come as two): not a loop.
    seen = text.count("config changed on disk")
    assert 2 <= seen <= 4, text[-3000:]
