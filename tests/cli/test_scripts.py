"""The CLI as scripts and CI use it: the real `splitproxy` in a subprocess against a real admin
API on 127.0.0.1. Each exit code, `status --wait-for`, proxy variables, a broken config."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from splitproxy.cli.exitcodes import ExitCode
from splitproxy.control.service import Service
from splitproxy.control.status import ActionResult, GuardReport, Status, to_json
from splitproxy.rollout import Action, guard
from tests.support.cli import cli
from tests.support.configs import proxy_config, route
from tests.support.load import hit
from tests.support.service import run_service, write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import WAIT, wait_until

# Step 1 sets the canary's weight, step 2 waits for `splitproxy promote`: paused, for good.
HOLD: list[dict[str, Any]] = [{"set_weight": 20}, {"pause": {}}]
PAUSED_LINE = "shop: paused step 1/2: waiting for promote"


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, steps: list[dict[str, Any]],
                  analysis: dict[str, Any] | None = None, revision: str | None = None,
                  **sections: Any,
                  ) -> AsyncIterator[tuple[Service, str, dict[str, Any]]]:
    """Route `shop` (stable/canary, with `steps`) and `plain` (no rollout) behind a started
    service; yields it, its admin URL and the config written."""
    async with run_upstreams("stable", "canary") as b:
        shop = route({"stable": b["stable"].url, "canary": b["canary"].url},
                     {"stable": 100, "canary": 0})
        shop["rollout"] = {"steps": steps, "revision": revision}
        if analysis is not None:
            shop["analysis"] = analysis
        plain = route({"stable": b["stable"].url}, name="plain", match={"path_prefix": "/p"})
        cfg = proxy_config([plain, shop], **sections)
        path = tmp_path / "shop.yaml"
        write_config(path, cfg)
        async with run_service(path, watch=False) as svc:
            yield svc, f"http://127.0.0.1:{svc.admin_port}", cfg


async def held(svc: Service) -> None:
    await wait_until(lambda: svc.controller.engine.states["shop"].phase == "paused",
                     what="shop paused at its `pause: {}`")


async def test_each_exit_code_of_the_admin_commands(
    tmp_path: Path, refused_port: Callable[[], int],
) -> None:
    async with serving(tmp_path, HOLD) as (svc, url, _):
        await held(svc)
        ok = await cli("status", "shop", "--admin", url)
        assert (ok.code, ok.err) == (ExitCode.OK, ""), ok
        assert "shop" in ok.out and "plain" not in ok.out  # ROUTE: that route only

        for args in (["status", "nope"], ["promote", "nope"]):
            missing = await cli(*args, "--admin", url)
            assert missing.code == ExitCode.NOT_FOUND, missing
            assert "no route named 'nope'" in missing.err

        refused = await cli("pause", "plain", "--admin", url)  # 409: no steps to pause
        assert refused.code == ExitCode.REFUSED, refused
        assert refused.err.startswith("error: 409: ")

        bad_reason = await cli("abort", "shop", "--reason", "x" * 501, "--admin", url)
        assert bad_reason.code == ExitCode.USAGE, bad_reason  # 400: the argument, refused
        assert "at most 500 characters" in bad_reason.err
        assert svc.controller.engine.states["shop"].phase == "paused"  # nothing happened

        nobody = f"http://127.0.0.1:{refused_port()}"
        for args in (["status"], ["abort", "shop"], ["status", "shop", "--wait-for", "promoted"]):
            unreachable = await cli(*args, "--admin", nobody)
            assert unreachable.code == ExitCode.UNREACHABLE, unreachable
            assert unreachable.err.startswith(f"error: cannot reach the admin API at {nobody}")

        usage = await cli("--log-level", "foo", "status", "--admin", url)
        assert usage.code == ExitCode.USAGE, usage
        assert "Traceback" not in usage.err
        assert "argument --log-level: invalid choice: 'FOO'" in usage.err


async def test_a_wrong_token_exits_1_and_the_right_one_0(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-s3cret-s3cret\n")
    async with serving(tmp_path, HOLD, admin={"token_file": "token"}) as (_, url, _):
        env = {k: v for k, v in os.environ.items() if k != "SPLITPROXY_ADMIN_TOKEN"}
        denied = await cli("status", "--admin", url, "--token", "wrong", env=env)
        assert denied.code == ExitCode.ERROR, denied
        assert denied.err.startswith("error: 401: ")
        allowed = await cli("status", "--admin", url, env={
            **env, "SPLITPROXY_ADMIN_TOKEN": "s3cret-s3cret-s3cret"})
        assert allowed.code == ExitCode.OK, allowed


async def test_wait_for_promoted_succeeds_when_the_steps_end(tmp_path: Path) -> None:
    async with serving(tmp_path, [{"set_weight": 50}, {"pause": "1s"}]) as (svc, url, _):
        done = await cli("status", "shop", "--wait-for", "promoted", "--timeout", "30s",
                         "--interval", "100ms", "--admin", url, timeout=40)
        assert (done.code, done.err) == (ExitCode.OK, ""), done
        lines = done.out.splitlines()
        assert lines[-1] == "shop: promoted step 2/2", lines
        assert svc.controller.engine.states["shop"].phase == "promoted"
        # Waiting for a phase already reached ends at the first poll.
        again = await cli("status", "shop", "--wait-for", "promoted", "--admin", url)
        assert (again.code, again.out) == (ExitCode.OK, "shop: promoted step 2/2\n"), again


async def test_wait_for_times_out_with_its_own_code(tmp_path: Path) -> None:
    async with serving(tmp_path, HOLD) as (svc, url, _):
        await held(svc)
        started = time.monotonic()
        waited = await cli("status", "shop", "--wait-for", "promoted", "--timeout", "500ms",
                           "--interval", "100ms", "--admin", url)
        assert time.monotonic() - started >= 0.5
        assert waited.code == ExitCode.TIMED_OUT, waited
        assert waited.out == PAUSED_LINE + "\n"  # printed once: it did not move
        assert waited.err == "shop: not promoted within 0.5s\n"
        # The phase it is in is reached at once.
        paused = await cli("status", "shop", "--wait-for", "paused", "--admin", url)
        assert (paused.code, paused.out) == (ExitCode.OK, PAUSED_LINE + "\n"), paused


async def test_wait_for_ends_at_another_final_phase_with_its_own_code(tmp_path: Path) -> None:
    async with serving(tmp_path, HOLD) as (svc, url, _):
        await held(svc)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "splitproxy", "status", "shop", "--wait-for", "promoted",
            "--timeout", "30s", "--interval", "100ms", "--admin", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stderr is not None
            # It polls: it has seen the pause. Now the rollout aborts under it.
            first = await asyncio.wait_for(proc.stdout.readline(), WAIT)
            assert first.decode() == PAUSED_LINE + "\n"
            await svc.controller.engine.act("shop", Action.ABORT, reason="bad build")
            code = await asyncio.wait_for(proc.wait(), WAIT)
            rest, err = await proc.stdout.read(), await proc.stderr.read()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert code == ExitCode.OTHER_OUTCOME
        assert rest.decode() == "shop: aborted step 1/2: manual: bad build\n"
        assert err.decode() == "shop: aborted, not promoted\n"
        aborted = await cli("status", "shop", "--wait-for", "aborted", "--admin", url)
        assert aborted.code == ExitCode.OK, aborted


async def test_wait_for_a_revision_ignores_the_rollout_before_it(tmp_path: Path) -> None:
    async with serving(tmp_path, HOLD, revision="v1") as (svc, url, cfg):
        await held(svc)  # v1 is paused: what a wait for v2's pause must not take for it
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "splitproxy", "status", "shop", "--wait-for", "paused",
            "--revision", "v2", "--timeout", "30s", "--interval", "100ms", "--admin", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            first = await asyncio.wait_for(proc.stdout.readline(), WAIT)
            assert first.decode() == "shop: waiting for revision v2 (the proxy has v1)\n"
            shop = {**cfg["routes"][1], "rollout": {"steps": HOLD, "revision": "v2"}}
            write_config(svc.path, {**cfg, "routes": [cfg["routes"][0], shop]})
            assert svc.controller.reload()
            out, err = await asyncio.wait_for(proc.communicate(), WAIT)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == ExitCode.OK, err
        assert out.decode().splitlines()[-1] == PAUSED_LINE


@contextlib.asynccontextmanager
async def recording_proxy() -> AsyncIterator[list[str]]:
    """An HTTP server standing in for a forward proxy: keeps every request line it gets."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.url}")
        return web.Response(status=502, text="via the proxy\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    seen.append(f"http://127.0.0.1:{port}")  # seen[0]: its URL
    try:
        yield seen
    finally:
        await runner.cleanup()


def proxied_env(proxy: str) -> dict[str, str]:
    """This environment with every proxy variable pointing at `proxy` and no exemptions."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in (
        "no_proxy", "http_proxy", "https_proxy", "all_proxy")}
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = proxy
    return env


async def test_admin_calls_never_go_through_proxy_variables(
    tmp_path: Path, refused_port: Callable[[], int],
) -> None:
    async with serving(tmp_path, HOLD) as (svc, url, _), recording_proxy() as seen:
        await held(svc)
        env = proxied_env(seen[0])
        # The control: in this environment, plain urllib does go through the proxy.
        probe = await asyncio.create_subprocess_exec(
            sys.executable, "-c",
            f"import urllib.request as u\ntry: u.urlopen({url + '/status'!r})\n"
            "except Exception as e: print(e)",
            env=env, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(probe.communicate(), WAIT)
        assert seen[1:] == [f"GET {url}/status"], (seen, out)

        shown = await cli("status", "--admin", url, env=env)
        assert (shown.code, shown.err) == (ExitCode.OK, ""), shown
        resumed = await cli("promote", "shop", "--admin", url, env=env)
        assert resumed.code == ExitCode.OK, resumed
        assert seen[1:] == [f"GET {url}/status"]  # nothing more reached the proxy

        # A proxy that is down changes nothing either.
        closed = proxied_env(f"http://127.0.0.1:{refused_port()}")
        again = await cli("status", "shop", "--admin", url, env=closed)
        assert again.code == ExitCode.OK, again


async def test_status_reads_admin_listen_from_a_broken_config(tmp_path: Path) -> None:
    async with serving(tmp_path, HOLD) as (svc, url, cfg):
        path = tmp_path / "edited.yaml"
        # The edit that went wrong: a weight for a version that does not exist.
        shop = {**cfg["routes"][1], "weights": {"stable": 90, "cnary": 10}}
        broken = {**cfg, "admin": {"listen": f"127.0.0.1:{svc.admin_port}"},
                  "routes": [cfg["routes"][0], shop]}
        write_config(path, broken)
        check = await cli("check", "-c", str(path))
        assert check.code == ExitCode.ERROR and "unknown version 'cnary'" in check.err

        shown = await cli("status", "-c", str(path))
        assert shown.code == ExitCode.OK, shown
        assert "shop" in shown.out
        assert shown.err == (f"note: {path} does not load (1 problem, see `splitproxy check -c "
                             f"{path}`); using its admin.listen 127.0.0.1:{svc.admin_port}\n")

        # Not even YAML: no address in it, so say what to do; --admin works regardless.
        path.write_text("routes: [\n")
        lost = await cli("status", "-c", str(path))
        assert lost.code == ExitCode.ERROR, lost
        assert lost.err.splitlines()[-1] == f"error: no admin address in {path}: pass --admin URL"
        direct = await cli("status", "-c", str(path), "--admin", url)
        assert (direct.code, direct.err) == (ExitCode.OK, ""), direct


async def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    async with serving(tmp_path, HOLD) as (svc, _, cfg):
        taken = f"127.0.0.1:{svc.proxy_port}"
        for what, sections in (("listen", {"listen": taken}),
                               ("admin.listen", {"admin": {"listen": taken}})):
            path = tmp_path / f"{what}.yaml"
            write_config(path, {**cfg, **sections})
            ran = await cli("--log-level", "warning", "run", "-c", str(path))
            assert ran.code == ExitCode.ERROR, ran
            assert ran.err == f"error: cannot listen on {taken} ({what}): Address already in use\n"


async def read_until(stream: asyncio.StreamReader | Callable[[], bytes], marker: bytes,
                     count: int) -> bytes:
    seen = b""
    while seen.count(marker) < count:
        if isinstance(stream, asyncio.StreamReader):
            chunk = await stream.read(4096)
        else:
            chunk = await asyncio.get_running_loop().run_in_executor(None, stream)
        assert chunk, f"output ended: {seen!r}"
        seen += chunk
    return seen


def ctrl_c_as_on_a_terminal() -> None:
    """SIGINT at its default, as in an interactive shell: a suite started in the background
    (`cmd &` without job control, `nohup`) passes SIGINT on ignored, and Python keeps an
    ignored SIGINT ignored, so the Ctrl-C below would never end the watch."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_watch_redraws_on_a_terminal_and_repeats_into_a_pipe(tmp_path: Path) -> None:
    async with serving(tmp_path, HOLD) as (_, url, _):
        args = ("-m", "splitproxy", "status", "--watch", "--interval", "100ms", "--admin", url)
        piped = await asyncio.create_subprocess_exec(sys.executable, *args,
                                                     stdout=asyncio.subprocess.PIPE,
                                                     preexec_fn=ctrl_c_as_on_a_terminal)
        master, slave = os.openpty()
        tty = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=slave,
                                                   preexec_fn=ctrl_c_as_on_a_terminal)
        os.close(slave)
        try:
            assert piped.stdout is not None
            into_pipe = await asyncio.wait_for(read_until(piped.stdout, b"ROUTE", 3), WAIT)
            on_tty = await asyncio.wait_for(
                read_until(lambda: os.read(master, 4096), b"ROUTE", 3), WAIT)
        finally:
            for proc in (piped, tty):
                if proc.returncode is None:
                    proc.send_signal(2)  # Ctrl-C: the usual end of watching
            codes = [await asyncio.wait_for(p.wait(), WAIT) for p in (piped, tty)]
            os.close(master)
        assert codes == [ExitCode.OK, ExitCode.OK]
        assert b"\x1b" not in into_pipe
        assert into_pipe.startswith(b"config ") and b"\n\nconfig " in into_pipe
        assert on_tty.count(b"\x1b[2J\x1b[H") >= 3


async def test_the_cli_reads_every_status_field_the_admin_api_sends(tmp_path: Path) -> None:
    """The models the CLI reads `/status` into lose nothing and alter nothing: read and written
    again, the answer is the same JSON (with a guard's rate and ratio tests and checks in it)."""
    analysis = {"interval": "100ms", "max_p99_ms": 200, "compare_to_baseline": {"margin": 0.5}}
    async with serving(tmp_path, [{"set_weight": 50}, {"pause": {}}], analysis=analysis,
                       ) as (svc, url, _), aiohttp.ClientSession() as session:
        engine = svc.controller.engine

        async def judged() -> bool:
            await hit(svc.proxy_port, 20)
            guard = engine.describe("shop").guard
            return guard is not None and len(guard.tests) == 4 \
                and bool(engine.states["shop"].checks)

        await wait_until(judged, what="rate and ratio tests in /status")
        async with session.get(f"{url}/status") as resp:
            body = await resp.json()
        status = Status.model_validate(body)
        assert json.loads(to_json(status)) == body
        # Nor do the models drop what the parts they are built from report (a key added to
        # the guard's report or a store's description must be added to its model too).
        raw = guard.report(engine.states["shop"], engine.routes["shop"])
        assert json.loads(to_json(GuardReport.model_validate(raw))) == json.loads(json.dumps(raw))
        store = json.loads(to_json(svc.controller.store_status()))
        del store["pending"]  # the engine's, added to the store's own description
        assert store == json.loads(json.dumps(svc.controller.store.describe()))
        shown = status.routes[1].rollout.guard
        assert shown is not None
        assert {type(t).__name__ for t in shown.tests} == {"RateTest", "RatioTest"}
        async with session.post(f"{url}/routes/shop/abort",
                                headers={"X-Splitproxy-Action": "1"}) as resp:
            answer = await resp.json()
        assert json.loads(to_json(ActionResult.model_validate(answer))) == answer
