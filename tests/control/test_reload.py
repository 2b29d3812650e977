"""Hot reload through real files and real watch events: in-place write, rename, ConfigMap
symlink swap, SIGHUP; bad edits keep the old config serving and are reported."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from splitproxy.control.service import Service
from tests.support.configs import split_config
from tests.support.load import served_by
from tests.support.rawhttp import RawClient, raw_client
from tests.support.service import (
    Reloads,
    admin,
    generation,
    metric,
    run_service,
    running_service,
    scrape,
    status,
    write_config,
)
from tests.support.upstream import Upstream, run_upstreams
from tests.support.waiting import wait_until


async def only_canary(c: RawClient, n: int = 20) -> bool:
    seen = await served_by(c, n)
    return set(seen) == {"canary"}


@pytest.fixture
async def two() -> AsyncIterator[dict[str, Upstream]]:
    async with run_upstreams("stable", "canary") as ups:
        yield ups


def last_reload(svc: Service) -> dict[str, Any]:
    return svc.controller.status().config.last_reload.model_dump()


# --------------------------------------------------------------------------- ways to replace


async def test_in_place_weight_change_reaches_traffic_once_applied(
    tmp_path: Path, two: dict[str, Upstream]
) -> None:
    # How fast a reload is seen is the watcher's (100 ms settle) and the machine's business,
    # not asserted in seconds here; what is asserted is that traffic follows the new weights
    # from the moment the new generation is applied, with no request routed by the old table.
    async with running_service(tmp_path, split_config(two, 90, 10)) as (svc, path):
        async with raw_client(svc.proxy_port) as c:
            before = await served_by(c, 100)
            assert before == {"stable": 90, "canary": 10}
            write_config(path, split_config(two, 0, 100))
            await wait_until(lambda: generation(svc) == 2, what="the new weights applied")
            assert await only_canary(c, 50)
        assert generation(svc) == 2


async def test_write_to_temp_and_rename_is_seen(tmp_path: Path, two: dict[str, Upstream]) -> None:
    async with running_service(tmp_path, split_config(two, 90, 10)) as (svc, path):
        tmp = tmp_path / ".config.yaml.a1b2c3"  # as editors and atomic writers do
        write_config(tmp, split_config(two, 0, 100))
        os.rename(tmp, path)
        await wait_until(lambda: generation(svc) == 2, 2.0, "reload after rename")
        async with raw_client(svc.proxy_port) as c:
            assert await only_canary(c)
        assert last_reload(svc)["result"] == "success"


def configmap_version(cfgdir: Path, stamp: str, cfg: dict[str, Any]) -> None:
    folder = cfgdir / stamp
    folder.mkdir()
    write_config(folder / "config.yaml", cfg)


async def test_kubernetes_configmap_symlink_swap_is_seen(
    tmp_path: Path, two: dict[str, Upstream]
) -> None:
    # The layout the kubelet maintains for a mounted ConfigMap.
    cfgdir = tmp_path / "cfgdir"
    cfgdir.mkdir()
    configmap_version(cfgdir, "..2026_01", split_config(two, 90, 10))
    os.symlink("..2026_01", cfgdir / "..data")
    os.symlink("..data/config.yaml", cfgdir / "config.yaml")
    path = cfgdir / "config.yaml"

    async with run_service(path) as svc:
        async with raw_client(svc.proxy_port) as c:
            assert (await served_by(c, 10))["canary"] == 1
        # The kubelet's atomic update: a new folder, a new symlink, renamed over `..data`.
        configmap_version(cfgdir, "..2026_02", split_config(two, 0, 100))
        os.symlink("..2026_02", cfgdir / "..data_tmp")
        os.rename(cfgdir / "..data_tmp", cfgdir / "..data")
        await wait_until(lambda: generation(svc) == 2, 2.0, "reload after ..data swap")
        async with raw_client(svc.proxy_port) as c:
            assert await only_canary(c)
        assert svc.controller.status().config.path == str(path)


async def test_sighup_reloads(
    tmp_path: Path, two: dict[str, Upstream], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="splitproxy")
    # No watcher: only the signal can make it notice the new file.
    async with running_service(tmp_path, split_config(two, 90, 10), watch=False) as (svc, path):
        write_config(path, split_config(two, 0, 100))
        # Without a handler SIGHUP would end the whole test run: check first.
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None), (
            "Service.start() on the main thread installed no SIGHUP handler"
        )
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(lambda: generation(svc) == 2, 2.0, "reload on SIGHUP "
                         "(is the SIGHUP handler installed?)")
        async with raw_client(svc.proxy_port) as c:
            assert await only_canary(c)
        # The signal applied the new file, once: nothing had before it.
        said = [r.getMessage() for r in caplog.records]
        sighup = next(i for i, m in enumerate(said) if m.startswith("SIGHUP: reloading"))
        applied = [i for i, m in enumerate(said) if m.startswith("config generation ")]
        assert len(applied) == 1 and applied[0] > sighup, said
        assert svc.controller.reloads == {"success": 1, "error": 0}


# --------------------------------------------------------------------------- bad edits


def _with_weights(text: str, **weights: int) -> str:
    cfg = yaml.safe_load(text)
    cfg["routes"][0]["weights"].update(weights)
    return yaml.safe_dump(cfg, sort_keys=False)


BAD_EDITS: dict[str, tuple[Callable[[str], str], list[str]]] = {
    # name: (how to break the good YAML text, expected pieces of the error text)
    "yaml_syntax": (lambda t: t.replace("canary: 10", "canary: 10: 5"), ["yaml error"]),
    "negative_weight": (
        lambda t: _with_weights(t, canary=-5), ["routes[0].weights.canary", ">= 0"]
    ),
    "unknown_version": (
        lambda t: _with_weights(t, blue=5), ["routes[0].weights.blue", "unknown version"]
    ),
    "empty_file": (lambda t: "", [":1:", "empty"]),
}


def error_line(text: str, marker: str) -> int:
    """1-based line of the first line containing `marker`."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)


@pytest.mark.parametrize("kind", sorted(BAD_EDITS))
async def test_bad_edit_keeps_old_config_and_is_reported(
    tmp_path: Path, two: dict[str, Upstream], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="splitproxy")
    good = split_config(two, 90, 10)
    async with running_service(tmp_path, good) as (svc, path), admin(svc) as session:
        text = path.read_text()
        breaker, pieces = BAD_EDITS[kind]
        bad = breaker(text)
        assert bad != text
        path.write_text(bad)
        await wait_until(lambda: last_reload(svc)["result"] == "error", 2.0, "reload error")

        body = await status(session)
        last = body["config"]["last_reload"]
        assert last["result"] == "error"
        assert last["time"] is not None
        assert last["error"].startswith(f"{path}:"), last["error"]
        for piece in pieces:
            assert piece in last["error"], (piece, last["error"])
        if kind == "yaml_syntax":
            assert f"{path}:{error_line(bad, 'canary: 10: 5')}:" in last["error"]
        if kind == "negative_weight":
            assert f"{path}:{error_line(bad, 'canary: -5')}:" in last["error"]
        if kind == "unknown_version":
            assert f"{path}:{error_line(bad, 'blue: 5')}:" in last["error"]
        assert body["config"]["generation"] == 1
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(last["error"].splitlines()[0] in m for m in logged), logged

        samples = await scrape(session)
        assert metric(samples, "splitproxy_config_reloads_total", result="error") == 1
        assert metric(samples, "splitproxy_config_reloads_total", result="success") == 0
        assert metric(samples, "splitproxy_config_generation") == 1
        assert metric(samples, "splitproxy_route_weight", version="canary") == 10

        # Still serving the old split.
        async with raw_client(svc.proxy_port) as c:
            assert await served_by(c, 100) == {"stable": 90, "canary": 10}

        # The next good edit applies.
        write_config(path, split_config(two, 0, 100))
        await wait_until(lambda: generation(svc) == 2, 2.0, "good edit after a bad one")
        body = await status(session)
        assert body["config"]["last_reload"]["result"] == "success"
        assert body["config"]["last_reload"]["error"] is None
        async with raw_client(svc.proxy_port) as c:
            assert await only_canary(c)
        samples = await scrape(session)
        assert metric(samples, "splitproxy_config_reloads_total", result="success") == 1
        assert metric(samples, "splitproxy_config_reloads_total", result="error") == 1


async def test_deleted_file_keeps_serving_and_recreated_file_applies(
    tmp_path: Path, two: dict[str, Upstream]
) -> None:
    cfg = split_config(two, 90, 10)
    async with running_service(tmp_path, cfg) as (svc, path), admin(svc) as session:
        path.unlink()
        await wait_until(lambda: last_reload(svc)["result"] == "error", 2.0, "reload error")
        error = (await status(session))["config"]["last_reload"]["error"]
        assert error.startswith(f"{path}:") and "cannot read" in error, error
        samples = await scrape(session)
        assert metric(samples, "splitproxy_config_reloads_total", result="error") == 1
        assert metric(samples, "splitproxy_config_generation") == 1
        async with raw_client(svc.proxy_port) as c:
            assert await served_by(c, 100) == {"stable": 90, "canary": 10}

        write_config(path, split_config(two, 0, 100))
        await wait_until(lambda: generation(svc) == 2, 2.0, "recreated file applied")
        assert last_reload(svc)["result"] == "success"
        async with raw_client(svc.proxy_port) as c:
            assert await only_canary(c)


async def test_burst_of_writes_is_debounced_and_the_last_one_wins(
    tmp_path: Path, two: dict[str, Upstream]
) -> None:
    async with running_service(tmp_path, split_config(two, 90, 10)) as (svc, path):
        reloads = Reloads(svc)
        for canary in (20, 30, 40, 50, 100):
            write_config(path, split_config(two, 100 - canary, canary))
            await asyncio.sleep(0.02)
        await wait_until(
            lambda: svc.controller.config.routes[0].weights == {"stable": 0, "canary": 100},
            2.0, "last write applied",
        )
        await wait_until(reloads.idle, 2.0, "every reload of the burst to finish")
        applied = svc.controller.reloads["success"]
        assert 1 <= applied <= 2, f"{applied} reloads for one burst of 5 writes"
        assert generation(svc) == 1 + applied
        async with raw_client(svc.proxy_port) as c:
            assert await only_canary(c)


async def test_listen_change_is_logged_as_not_applied(
    tmp_path: Path, two: dict[str, Upstream], caplog: pytest.LogCaptureFixture,
    refused_port: Callable[[], int],
) -> None:
    caplog.set_level(logging.INFO, logger="splitproxy")
    async with running_service(tmp_path, split_config(two, 90, 10)) as (svc, path):
        old_port = svc.proxy_port
        new_port = refused_port()
        cfg = split_config(two, 0, 100)
        cfg["listen"] = f"127.0.0.1:{new_port}"
        write_config(path, cfg)
        await wait_until(lambda: generation(svc) == 2, 2.0, "reload with a new listen")
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("listen" in m and "not applied" in m and str(new_port) in m
                   for m in messages), messages
        # The rest of the file applied, and the proxy still serves on the old port only.
        assert svc.proxy_port == old_port
        async with raw_client(old_port) as c:
            assert await only_canary(c)
        with pytest.raises(OSError):
            async with raw_client(new_port):
                pass


async def test_generation_increments_only_on_applied_changes(
    tmp_path: Path, two: dict[str, Upstream]
) -> None:
    good = split_config(two, 90, 10)
    async with running_service(tmp_path, good) as (svc, path), admin(svc) as session:
        assert (await status(session))["config"]["generation"] == 1

        reloads = Reloads(svc)

        # Same meaning, different bytes: a comment and a rewritten duration.
        path.write_text("# edited by hand\n" + path.read_text())
        await wait_until(lambda: last_reload(svc)["result"] == "success", 2.0, "comment edit")
        await wait_until(reloads.idle, 2.0, "the comment edit's reloads to finish")
        assert generation(svc) == 1

        # A file touched without change of content: seen, reloaded, nothing applied.
        seen = reloads.events
        os.utime(path)
        await wait_until(lambda: reloads.events > seen and reloads.idle(), 2.0,
                         "the touch to be seen and handled")
        assert generation(svc) == 1

        # A bad edit.
        path.write_text("routes: [")
        await wait_until(lambda: last_reload(svc)["result"] == "error", 2.0, "bad edit")
        assert generation(svc) == 1

        # A real change.
        write_config(path, split_config(two, 50, 50))
        await wait_until(lambda: generation(svc) == 2, 2.0, "real change")
        await wait_until(reloads.idle, 2.0, "the real change's reloads to finish")
        assert generation(svc) == 2
        samples = await scrape(session)
        assert metric(samples, "splitproxy_config_generation") == 2
        assert (await status(session))["config"]["generation"] == 2


async def test_unrelated_file_in_the_directory_does_not_reload(
    tmp_path: Path, two: dict[str, Upstream]
) -> None:
    async with running_service(tmp_path, split_config(two, 90, 10)) as (svc, _):
        reloads, ignored = Reloads(svc), svc.controller.watcher.ignored
        (tmp_path / "notes.txt").write_text("hello")
        (tmp_path / "other.yaml").write_text(yaml.safe_dump({"routes": []}))
        # Seen by the watcher and dropped there, before anything is counted as a change.
        await wait_until(lambda: ignored["notes.txt"] > 0 and ignored["other.yaml"] > 0, 2.0,
                         "the other files to be seen and dropped")
        assert reloads.events == 0 and reloads.idle()
        assert generation(svc) == 1
        assert svc.controller.reloads == {"success": 0, "error": 0}
        assert last_reload(svc)["result"] is None
