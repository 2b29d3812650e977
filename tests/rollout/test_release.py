"""The README's release walkthrough ("A release, end to end"), followed block by block: v1
stable, v2 canary, promotion, v2 made stable, v3 canary, each applied by the file watcher while
clients keep sending requests. Not one fails and none reaches v1 once v2 is promoted. Ending
the release too early is flagged by `splitproxy check` and at the reload, and not refused."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import cli
from tests.support.configs import proxy_config
from tests.support.load import Load, plain
from tests.support.service import admin, run_service, status, write_config
from tests.support.upstream import Upstream, run_upstreams
from tests.support.waiting import wait_until

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## A release, end to end"
# The README's addresses, and the upstream each stands for.
ADDRESSES = {"http://127.0.0.1:9001": "v1", "http://127.0.0.1:9002": "v2",
             "http://127.0.0.1:9003": "v3"}


def readme_blocks() -> dict[str, str]:
    """The YAML blocks of the section, by the comment on their first line."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start + len(SECTION))]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    out = {}
    for block in blocks:
        label = re.match(r"\s*# (.+)\n", block)
        assert label, f"a walkthrough block without its label comment: {block[:60]!r}"
        out[label.group(1)] = block
    return out


def stage(label: str, backends: dict[str, Upstream], state: Path) -> dict[str, Any]:
    """The full config for the README block whose label starts with `label`."""
    [block] = [b for name, b in readme_blocks().items() if name.startswith(label)]
    for address, name in ADDRESSES.items():
        block = block.replace(address, backends[name].url)
    [route] = yaml.safe_load(block)
    return proxy_config([route], state={"path": str(state)})


async def apply(svc: Any, path: Path, cfg: dict[str, Any]) -> None:
    """Write the file and wait for the watcher's reload to apply it."""
    generation = svc.controller.generation()
    write_config(path, cfg)
    await wait_until(lambda: svc.controller.generation() > generation, what="the reload")


async def rollout(svc: Any) -> dict[str, Any]:
    async with admin(svc) as session:
        body = await status(session)
    result: dict[str, Any] = body["routes"][0]["rollout"]
    return result


async def promote(svc: Any, full: bool = False) -> None:
    async with admin(svc) as session:
        params = {"full": "1"} if full else {}
        async with session.post("/routes/shop/promote", params=params) as resp:
            assert resp.status == 200, await resp.text()


async def phase_is(svc: Any, phase: str, reason: str | None = None) -> bool:
    ro = await rollout(svc)
    return bool(ro["phase"] == phase and (reason is None or ro["pause_reason"] == reason))


async def check(cfg: dict[str, Any], tmp_path: Path) -> list[str]:
    """`splitproxy check` on a candidate file (outside the watched directory), reading the
    same rollout state: its warnings."""
    candidate = tmp_path / "candidate" / "next.yaml"
    candidate.parent.mkdir(exist_ok=True)
    write_config(candidate, cfg)
    result = await cli("check", "-c", str(candidate))
    assert result.code == 0, result
    return [line for line in result.out.splitlines() if line.startswith(("warning", "note"))]


def served(hits: list[Any]) -> set[str]:
    return {h.served_by for h in hits}


@pytest.mark.timeout(90)
async def test_the_readme_release_walkthrough_fails_no_request_and_never_goes_back_to_v1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="splitproxy.rollout")
    state = tmp_path / "shop.state.json"
    async with run_upstreams("v1", "v2", "v3") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, stage("1.", b, state))
        async with run_service(path) as svc, \
                Load(svc.proxy_port, {"a": plain, "b": plain}, gap=0.005).running() as load:
            await wait_until(lambda: "v1" in served(load.hits), what="v1 serving")

            # 2. v2 as the canary: 10% at once, then the 10 min pause.
            await apply(svc, path, stage("2.", b, state))
            await wait_until(lambda: phase_is(svc, "progressing"), what="the rollout")
            await wait_until(lambda: "v2" in served(load.hits), what="v2 serving")
            await promote(svc)  # skips the 10 min pause: 50%, then the wait for promote
            await wait_until(lambda: phase_is(svc, "paused", "waiting for promote"),
                             what="the wait for promote")

            # 3. Promotion: the last step gives v2 everything.
            await promote(svc)
            await wait_until(lambda: phase_is(svc, "promoted"), what="the promotion")
            promoted_at = time.time()
            await wait_until(lambda: len(load.since(promoted_at)) >= 50, what="traffic")

            # 4. v2 becomes the stable: check has nothing to say, the traffic stays on v2.
            assert await check(stage("4.", b, state), tmp_path) == []
            await apply(svc, path, stage("4.", b, state))
            assert await phase_is(svc, "idle")
            made_stable = time.time()
            await wait_until(lambda: len(load.since(made_stable)) >= 50, what="traffic")

            # 5. The next release: v3 as the canary.
            assert await check(stage("5.", b, state), tmp_path) == []
            await apply(svc, path, stage("5.", b, state))
            await wait_until(lambda: "v3" in served(load.since(made_stable)), what="v3")
            ro = await rollout(svc)
            assert (ro["phase"], ro["revision"]) == ("progressing", "v3")

    assert load.failures == []
    assert {h.status for h in load.hits} == {200}, "a request failed during a reload"
    after = load.since(promoted_at)
    assert served(after) == {"v2", "v3"}, "traffic went back to v1 after the promotion"
    assert served(load.since(made_stable)) == {"v2", "v3"}
    assert b["v1"].errors == b["v2"].errors == b["v3"].errors == 0
    assert not [r for r in caplog.records if "release:" in r.getMessage()]


@pytest.mark.timeout(60)
async def test_ending_a_release_too_early_is_flagged_by_check_and_the_reload_not_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="splitproxy.rollout")
    state = tmp_path / "shop.state.json"
    async with run_upstreams("v1", "v2", "v3") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, stage("2.", b, state))
        async with run_service(path) as svc:
            await wait_until(lambda: phase_is(svc, "progressing"), what="the rollout")
            await promote(svc, full=True)
            await wait_until(lambda: phase_is(svc, "promoted"), what="the promotion")

            too_early = stage("too early", b, state)
            [warning] = await check(too_early, tmp_path)
            assert warning.startswith("warning: route shop: release: the rollout promoted to "
                                      "'canary' is replaced by one that sends traffic back to "
                                      "endpoints of the old stable"), warning
            assert f"stable -> {b['v1'].url}." in warning
            assert "Unless this is a rollback" in warning
            # v3 started while stable is still v1: the same slip.
            v3_early = stage("5.", b, state)
            v3_early["routes"][0]["versions"]["stable"]["endpoints"] = [b["v1"].url]
            [warning] = await check(v3_early, tmp_path)
            assert f"stable -> {b['v1'].url}." in warning

            assert not [r for r in caplog.records if "release:" in r.getMessage()]
            await apply(svc, path, too_early)
            [logged] = [r for r in caplog.records if "release:" in r.getMessage()]
            assert logged.levelno == logging.WARNING
            assert logged.getMessage().startswith("rollout route=shop release: the rollout "
                                                  "promoted to 'canary'")
            # Flagged, not refused: it may be a rollback, and then this is what was asked.
            assert svc.controller.last_result == "success"
            body = json.loads(svc.controller.status().model_dump_json())
            versions = body["routes"][0]["versions"]
            assert versions["stable"]["effective_weight"] == 100
