"""Rollout state survives a real restart: a Service is stopped and a new one started from the
same config file; the state file beside it decides the first routing table."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from splitproxy.config.models import ConfigError
from splitproxy.control.service import Service
from tests.support.configs import rollout_config
from tests.support.load import hit
from tests.support.service import admin, run_service, status, write_config
from tests.support.upstream import Upstream, run_upstreams
from tests.support.waiting import wait_until

# The first request of a fresh table goes to the heaviest version: the canary, unless aborted.
CANARY_HEAVY: dict[str, Any] = {
    "weights": {"stable": 10, "canary": 90},
    "rollout": {"revision": "v1", "steps": [{"set_weight": 90}, {"pause": {}}]},
}


def shop_config(backends: dict[str, Upstream], state: dict[str, str] | None = None,
                **kw: Any) -> dict[str, Any]:
    cfg = rollout_config(backends, **{**CANARY_HEAVY, **kw})
    if state is not None:
        cfg["state"] = state
    return cfg


async def test_an_abort_survives_a_real_restart(tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, shop_config(b))
        async with run_service(path, watch=False) as svc:
            assert (await hit(svc.proxy_port, 10))["canary"] >= 8  # 90 % (a tick may rebuild)
            async with admin(svc) as session:
                async with session.post("/routes/shop/abort",
                                        params={"reason": "bad build"}) as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["rollout"]["phase"] == "aborted"
            await svc.stop(drain=1.0)

        state_file = tmp_path / "shop.state.json"
        saved = json.loads(state_file.read_text())
        assert saved["routes"]["shop"]["phase"] == "aborted"
        assert saved["routes"]["shop"]["abort_reason"] == "manual: bad build"

        canary_before = b["canary"].requests
        async with run_service(path, watch=False) as svc:
            # From the very first request: 90 % canary in the config, 0 % after the abort.
            assert await hit(svc.proxy_port, 1) == {"stable": 1}
            assert await hit(svc.proxy_port, 50) == {"stable": 50}
            async with admin(svc) as session:
                shop = (await status(session))["routes"][0]
        assert b["canary"].requests == canary_before  # counted at the canary itself
        assert shop["rollout"]["phase"] == "aborted"
        assert shop["rollout"]["abort_reason"] == "manual: bad build"
        assert shop["versions"]["canary"]["effective_weight"] == 0


async def test_the_state_file_is_valid_json_beside_the_config(tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "prod.yaml"
        write_config(path, shop_config(b))
        async with run_service(path, watch=False) as svc:
            state_file = tmp_path / "prod.state.json"
            assert state_file.is_file()
            data = json.loads(state_file.read_text())
            assert data["version"] == 2
            assert set(data["routes"]) == {"shop"}
            assert data["routes"]["shop"]["identity"] == \
                svc.controller.engine.states["shop"].identity
        # Atomic writes leave no temp files behind.
        assert sorted(p.name for p in tmp_path.iterdir()) == ["prod.state.json", "prod.yaml"]


async def test_a_relative_state_path_is_beside_the_config(tmp_path: Path) -> None:
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, shop_config(b, state={"path": "var/rollouts.json"}))
        async with run_service(path, watch=False):
            pass
        assert "shop" in json.loads((tmp_path / "var" / "rollouts.json").read_text())["routes"]


@pytest.mark.parametrize("garbage", ["{not json", "[]", '{"routes": {"shop": {"phase": 1}}}', ""])
async def test_a_corrupt_state_file_is_reported_and_treated_as_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: str
) -> None:
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, shop_config(b))
        state_file = tmp_path / "shop.state.json"
        state_file.write_text(garbage)
        with caplog.at_level(logging.ERROR, logger="splitproxy.control.stores.store"):
            async with run_service(path, watch=False) as svc:
                # A fresh rollout (its first step may have run already).
                assert svc.controller.engine.states["shop"].phase in ("progressing", "paused")
                assert svc.controller.engine.states["shop"].abort_reason is None
                # Fresh: 90 % canary again (a tick may rebuild the table mid-way).
                assert (await hit(svc.proxy_port, 10))["canary"] >= 8
        assert any("corrupt" in r.getMessage() and str(state_file) in r.getMessage()
                   for r in caplog.records), caplog.text
        # Rewritten with the fresh state.
        assert json.loads(state_file.read_text())["routes"]["shop"]["phase"] in (
            "progressing", "paused")


async def test_a_corrupt_state_file_is_reported_in_status(tmp_path: Path) -> None:
    # An abort lost to a corrupt file puts the canary back in traffic: the operator must be
    # able to see why, not only in a log line at start-up.
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, shop_config(b))
        (tmp_path / "shop.state.json").write_text("{not json")
        async with run_service(path, watch=False) as svc:
            async with admin(svc) as session:
                report = (await status(session))["state_store"]
        assert report["error"] is not None and "corrupt" in report["error"], report


async def test_an_unwritable_state_path_fails_at_start_up_with_a_clear_message(
    tmp_path: Path,
) -> None:
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, shop_config(b, state={"path": "/proc/forbidden/x.json"}))
        with pytest.raises(ConfigError) as caught:
            Service(path, watch=False)
    message = str(caught.value)
    assert message.startswith("state.path: cannot write rollout state to /proc/forbidden/x.json")
    assert "No such file or directory" in message


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """`directory` cannot be written while inside: mode 0555, and for root (whom modes do not
    stop) the immutable attribute as well."""
    mode = directory.stat().st_mode
    directory.chmod(0o555)
    immutable = False
    try:
        if os.geteuid() == 0:
            chattr = shutil.which("chattr")
            if chattr is None or subprocess.run([chattr, "+i", str(directory)],
                                                 capture_output=True).returncode != 0:
                pytest.skip("running as root without `chattr +i`: cannot make a folder "
                            "read-only")
            immutable = True
        probe = directory / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(mode)


async def test_a_failed_state_write_is_retried_until_it_lands_and_the_abort_survives_a_restart(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, shop_config(b, state={"path": "state/shop.json"}))
        async with run_service(path, watch=False) as svc:
            await wait_until(lambda: svc.controller.engine.weights()["shop"]["canary"] == 90,
                             what="step 1")
            async with admin(svc) as session:
                with read_only(state_dir):
                    async with session.post("/routes/shop/abort",
                                            params={"reason": "bad build"}) as resp:
                        assert resp.status == 200, await resp.text()
                        body = await resp.json()
                    assert body["rollout"]["phase"] == "aborted"
                    assert body["rollout"]["write_pending"]["error"].startswith("cannot write")
                    report = (await status(session))["state_store"]
                    assert report["up"] is False
                    assert report["pending"]["shop"]["phase"] == "aborted"
                    assert await hit(svc.proxy_port, 20) == {"stable": 20}  # in effect now
                # Writable again: the pending write lands (retried with backoff, <= 5 s apart).
                async def landed() -> bool:
                    return not (await status(session))["state_store"]["pending"]

                await wait_until(landed, timeout=10, what="the pending write to land")
                assert (await status(session))["state_store"]["up"] is True
            saved = json.loads((state_dir / "shop.json").read_text())["routes"]["shop"]
            assert (saved["phase"], saved["abort_reason"]) == ("aborted", "manual: bad build")

        canary_before = b["canary"].requests
        async with run_service(path, watch=False) as svc:
            assert await hit(svc.proxy_port, 50) == {"stable": 50}
            assert svc.controller.engine.states["shop"].phase == "aborted"
        assert b["canary"].requests == canary_before
