"""Upgrading from splitproxy 0.1: its state file (format 1, written by that code: see
tests/fixtures/legacy) is migrated on the first start, and an aborted route stays aborted.

The fixture's endpoints are part of format 1's revision hash, so the config keeps them; nothing
listens there, and the tests read the routing table and /status instead of sending traffic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from splitproxy.config.models import load
from splitproxy.rollout import legacy_revision
from tests.support.service import admin, run_service, status

LEGACY = Path(__file__).parent.parent / "fixtures" / "legacy"


def upgraded(tmp_path: Path) -> Path:
    for name in ("shop.yaml", "shop.state.json"):
        shutil.copy(LEGACY / name, tmp_path / name)
    return tmp_path / "shop.yaml"


def test_the_format_1_revision_hash_is_recomputed_exactly() -> None:
    saved = json.loads((LEGACY / "shop.state.json").read_text())["routes"]
    config = load(LEGACY / "shop.yaml")
    assert {r.name: legacy_revision(r) for r in config.routes} == {
        name: state["revision"] for name, state in saved.items()}


async def test_an_aborted_route_in_a_format_1_state_file_stays_aborted(tmp_path: Path) -> None:
    path = upgraded(tmp_path)
    for _ in range(2):  # the upgrade, then a restart on the migrated file
        async with run_service(path, watch=False) as svc:
            assert svc.controller.engine.weights()["shop"] == {"stable": 100, "canary": 0}
            async with admin(svc) as session:
                shop, web = (await status(session))["routes"]
            assert shop["rollout"]["phase"] == "aborted"
            assert shop["rollout"]["abort_reason"] == "manual: bad build"
            assert shop["rollout"]["aborted_by"] == "operator"
            assert shop["versions"]["canary"]["effective_weight"] == 0
            assert (web["rollout"]["phase"], web["versions"]["blue"]["effective_weight"]) == (
                "idle", 100)
        saved = json.loads((tmp_path / "shop.state.json").read_text())
        assert saved["version"] == 2
        assert saved["routes"]["shop"]["phase"] == "aborted"


async def test_an_endpoint_edit_made_with_the_upgrade_starts_over(tmp_path: Path) -> None:
    # Format 1 cannot tell an endpoint edit from a new rollout: only an unchanged config
    # is recognised. (From format 2 on, endpoints are not part of a rollout.)
    path = upgraded(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["routes"][0]["versions"]["stable"]["endpoints"].append("http://127.0.0.1:19005")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    async with run_service(path, watch=False) as svc:
        assert svc.controller.engine.states["shop"].abort_reason is None


async def test_a_blue_green_switch_made_with_the_upgrade_knows_the_color_that_served(
    tmp_path: Path,
) -> None:
    path = upgraded(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["routes"][1]["active"] = "green"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    async with run_service(path, watch=False) as svc:
        web = svc.controller.engine.states["web"]
        assert (web.phase, web.active, web.previous_active) == ("idle", "green", "blue")
        assert svc.controller.engine.weights()["web"] == {"blue": 0, "green": 100}
        assert svc.controller.engine.states["shop"].phase == "aborted"
