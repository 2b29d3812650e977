"""`splitproxy check` reads the rollout state: it warns when a promoted rollout's endpoints
change without a new `rollout.revision` (a new build would serve unwatched), and says when it
cannot tell."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tests.support.cli import cli
from tests.support.configs import rollout_config
from tests.support.service import admin, run_service, write_config
from tests.support.upstream import run_upstreams


async def promoted(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    async with run_upstreams("stable", "canary", "canary2") as b:
        cfg = rollout_config({"stable": b["stable"], "canary": b["canary"]},
                             weights={"stable": 100, "canary": 0},
                             rollout={"revision": "v1", "steps": [{"set_weight": 10},
                                                                  {"pause": {}}]})
        path = tmp_path / "shop.yaml"
        write_config(path, cfg)
        async with run_service(path, watch=False) as svc:
            async with admin(svc) as session:
                async with session.post("/routes/shop/promote", params={"full": "1"}) as r:
                    assert r.status == 200, await r.text()
    return path, cfg


async def test_check_warns_when_a_promoted_rollout_s_endpoints_change_without_a_revision(
    tmp_path: Path,
) -> None:
    path, cfg = await promoted(tmp_path)
    same = await cli("check", "-c", str(path))
    assert same.code == 0 and "warning" not in same.out, same

    moved = copy.deepcopy(cfg)
    moved["routes"][0]["versions"]["canary"]["endpoints"] = ["http://127.0.0.1:9"]
    write_config(path, moved)
    result = await cli("check", "-c", str(path))
    assert result.code == 0, result
    [warning] = [line for line in result.out.splitlines() if line.startswith("warning")]
    assert warning.startswith("warning: route shop: the rollout (revision v1) is promoted")
    assert "canary: " in warning and "-> http://127.0.0.1:9." in warning
    assert "set rollout.revision" in warning

    moved["routes"][0]["rollout"]["revision"] = "v2"  # a new rollout: its endpoints are its own
    write_config(path, moved)
    result = await cli("check", "-c", str(path))
    assert result.code == 0 and "without a new rollout.revision" not in result.out, result
    # ... but it starts while the stable is still the build the promotion replaced: a release
    # ended too early (test_release.py has the rest).
    [warning] = [line for line in result.out.splitlines() if line.startswith("warning")]
    assert warning.startswith("warning: route shop: release: the rollout promoted to 'canary'")


async def test_check_says_when_it_cannot_read_the_state(tmp_path: Path) -> None:
    path, _ = await promoted(tmp_path)
    (tmp_path / "shop.state.json").write_text("{not json")
    result = await cli("check", "-c", str(path))
    assert result.code == 0, result
    assert "note: cannot read the rollout state (corrupt state file: " in result.out
    assert "cannot tell whether a promoted route's endpoints changed" in result.out
