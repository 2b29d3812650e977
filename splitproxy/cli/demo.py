"""`splitproxy demo`: a canary rollout watched by the guard, in one process.

Two built-in upstreams (stable, canary: `demoapp`), the real proxy in front of them with
`config/demo.yaml` (a canary rollout with analysis and steps), and a light steady load through
the proxy so the guard has evidence. Every demo starts fresh: it runs a copy of the config in
a new temporary directory, its rollout state beside it, deleted on exit (an abort from the
last demo must not greet the next one). The banner gives the lines to watch the rollout,
break the canary and act on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from aiohttp import web

from splitproxy.cli.demoapp import FAULT_PATH, BackgroundLoad, make_upstream_app, start_upstream
from splitproxy.config.models import Config, ConfigError, Route, load

log = logging.getLogger("splitproxy.cli.demo")

UPSTREAM_HOST = "127.0.0.1"
# The demo config points its versions at these and listens on these; keep them in step.
UPSTREAMS: dict[str, int] = {"stable": 9001, "canary": 9002}
PROXY_PORT, ADMIN_PORT = 8080, 9901
DEFAULT_ADMIN = f"http://127.0.0.1:{ADMIN_PORT}"  # what the CLI talks to without --admin
LOAD_RATE = 50.0  # requests/s: 12/s reach a canary at 25%, evidence for a step in ~10 s
DRAIN_SECONDS = 2.0

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"

# Used when the package is installed without the repository's config/ (a wheel, the image);
# a test keeps it identical to config/demo.yaml.
EMBEDDED_CONFIG = """\
# `splitproxy demo` (and `make demo`) runs this: a canary rollout of route `demo`, watched by
# the guard, in front of two built-in upstreams (stable on :9001, canary on :9002) with a light
# background load through the proxy. It runs a copy in a fresh temporary directory, with its
# rollout state, so every demo starts over; the banner says where the copy is (edit it: the
# proxy reloads). config/example.yaml explains every field.
listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9901
routes:
  - name: demo
    versions:
      stable:
        endpoints: ["http://127.0.0.1:9001"]
      canary:
        endpoints: ["http://127.0.0.1:9002"]
    weights: {stable: 100, canary: 0}  # the starting point: the steps own the weights
    sticky:
      pin_header: X-Splitproxy-Version
      hash_header: X-User-Id
      cookie: splitproxy-demo
    analysis:
      interval: 1s
      max_error_rate: 0.05  # abort once the canary's 5xx rate is shown to be above 5%
      max_p90_ms: 250       # ... or more than 10% of its requests take over 250 ms
    rollout:
      revision: v2
      steps:
        - set_weight: 25
        - pause: 10s        # ends when 10 s are up AND the guard has passed the step
        - set_weight: 50
        - pause: 10s
        - pause: {}         # waits for `splitproxy promote demo`
        - set_weight: 100
"""


def config_text(path: str | None) -> str:
    """The demo config to copy: the given file, the repository's, or the embedded one."""
    if path is not None:
        return Path(path).read_text(encoding="utf-8")
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG.read_text(encoding="utf-8")
    log.info("%s not found; using the embedded demo config", DEFAULT_CONFIG)
    return EMBEDDED_CONFIG


def with_ports(text: str, ports: dict[int, int]) -> str:
    """The config with each loopback port in `ports` replaced (the demo's four addresses)."""
    def swap(m: re.Match[str]) -> str:
        return f"127.0.0.1:{ports.get(int(m.group(1)), int(m.group(1)))}"

    return re.sub(r"127\.0\.0\.1:(\d+)(?!\d)", swap, text)


@dataclass(frozen=True, slots=True)
class Addresses:
    proxy: int
    admin: int
    upstreams: dict[str, int]


def cli_command() -> str:
    """How this process was started, to print commands the user can paste: `splitproxy` when
    that is on PATH, else the script's path (relative when below the current directory)."""
    argv0 = os.path.abspath(sys.argv[0])
    if os.path.basename(argv0) != "splitproxy":
        return f"{_short(sys.executable)} -m splitproxy"
    on_path = shutil.which("splitproxy")
    if on_path is not None and os.path.abspath(on_path) == argv0:
        return "splitproxy"
    return _short(argv0)


def _short(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def describe_steps(route: Route) -> str:
    rollout = route.rollout
    parts = []
    for step in rollout.steps if rollout is not None else ():
        if step.set_weight is not None:
            parts.append(f"canary {step.set_weight}%")
        elif step.set_header_route is not None:
            parts.append(f"canary for {step.set_header_route.describe()}")
        elif step.set_mirror is not None:
            parts.append(f"mirror {step.set_mirror.describe()}")
        elif step.pause is not None and step.pause.duration is not None:
            parts.append(f"pause {step.pause.duration:g}s")
        else:
            parts.append("wait for promote")
    return " -> ".join(parts)


def banner(config: Config, addr: Addresses, config_path: Path, load_rate: float,
           cli: str = "splitproxy") -> str:
    """What the demo is and the lines to try, once everything is up."""
    route = config.routes[0]
    name = route.name
    admin = "" if addr.admin == ADMIN_PORT else f" --admin http://127.0.0.1:{addr.admin}"
    proxy = f"http://127.0.0.1:{addr.proxy}/"
    canary = f"http://127.0.0.1:{addr.upstreams['canary']}{FAULT_PATH}"
    ups = ", ".join(f"{v} http://127.0.0.1:{p}" for v, p in addr.upstreams.items())
    load = (f"{load_rate:g} requests/s of background load go through it" if load_rate > 0
            else "no background load (--load 0): send your own")
    steps = describe_steps(route)
    guard = route.analysis
    lines = [
        f"splitproxy demo: a canary rollout of route `{name}`"
        + (", watched by the guard" if guard else ""),
        "",
        f"  proxy      {proxy}  ({load})",
        f"  dashboard  http://127.0.0.1:{addr.admin}/dashboard",
        f"  upstreams  {ups}",
        f"  config     {config_path}",
        "             (a fresh copy, its rollout state beside it: edit it and the proxy reloads)",
        "",
    ]
    if steps:
        lines += [f"The rollout: {steps}."]
    if guard and steps:
        lines += [
            "A timed pause ends when its time is up AND the guard has passed the step: the",
            "background load brings that evidence within seconds (until then `status` says",
            "`waiting for evidence`, with the numbers still missing).",
        ]
    elif steps:
        lines += ["This config has no `analysis`: pauses end on their timer, nothing aborts."]
    lines += [
        "",
        "1. Watch it, in another terminal:",
        f"     {cli} status --watch{admin}",
        "",
        "2. Break the canary: half of its requests fail. Within about 15 s the guard aborts",
        "   the rollout, says why with its numbers, and all traffic is back on stable:",
        f"     curl -s -X POST '{canary}?error_rate=0.5'",
        f"   or make it slow instead: curl -s -X POST '{canary}?latency_ms=400'",
        "",
        "3. Heal it, then retry: a new run from the first step:",
        f"     curl -s -X POST '{canary}'",
        f"     {cli} retry {name}{admin}",
        "",
        "4. Hold it, go on, skip a pause, finish:",
        f"     {cli} pause {name}{admin}",
        f"     {cli} resume {name}{admin}",
        f"     {cli} promote {name}{admin}          # skips a pause; passes `wait for promote`",
        f"     {cli} promote {name} --full{admin}   # straight to the end: canary 100%",
        "",
        "Routing, any time:",
        f"     curl -s -H 'X-Splitproxy-Version: canary' {proxy}   # pin a version",
        f"     curl -s -H 'X-User-Id: alice' {proxy}               # one user, one version",
        "",
        "Ctrl-C stops the demo and deletes its temporary directory.",
        "",
    ]
    return "\n".join(lines)


def _install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not available on every platform (Windows); Ctrl-C then cancels the main task instead.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def run_demo(text: str, *, free_ports: bool = False, load_rate: float = LOAD_RATE,
                   stop: asyncio.Event | None = None, out: TextIO | None = None) -> None:
    """Run the upstreams, the proxy (config `text`, copied into a temporary directory) and
    the background load until `stop` is set (by default: SIGINT or SIGTERM)."""
    # Imported here so the upstream half of the demo works without the server wiring.
    from splitproxy.control.service import Service

    if stop is None:
        stop = asyncio.Event()
        _install_stop_signals(stop)
    out = out if out is not None else sys.stdout
    runners: list[web.AppRunner] = []
    with tempfile.TemporaryDirectory(prefix="splitproxy-demo-") as tmp:
        try:
            ports: dict[int, int] = {}
            bound: dict[str, int] = {}
            for name, port in UPSTREAMS.items():
                runner = await start_upstream(make_upstream_app(name), UPSTREAM_HOST,
                                              0 if free_ports else port)
                runners.append(runner)
                ports[port] = bound[name] = int(runner.addresses[0][1])
                log.info("upstream %s listening on %s:%d", name, UPSTREAM_HOST, bound[name])
            if free_ports:
                ports |= {PROXY_PORT: 0, ADMIN_PORT: 0}
            path = Path(tmp) / "demo.yaml"
            path.write_text(with_ports(text, ports), encoding="utf-8")
            config = load(path)
            service = Service(path)
            await service.start()
            load_ = BackgroundLoad(f"http://127.0.0.1:{service.proxy_port}/", load_rate)
            try:
                load_.start()
                addr = Addresses(service.proxy_port, service.admin_port, bound)
                out.write(banner(config, addr, path, load_rate, cli_command()))
                out.flush()
                await stop.wait()
                log.info("stopping: draining for up to %.0fs", DRAIN_SECONDS)
            finally:
                await load_.stop()
                await service.stop(drain=DRAIN_SECONDS)
        finally:
            for runner in reversed(runners):
                await runner.cleanup()
    log.info("demo stopped")


def _run(text: str, free_ports: bool, load_rate: float) -> None:
    demo = run_demo(text, free_ports=free_ports, load_rate=load_rate)
    try:
        import uvloop
    except ImportError:
        asyncio.run(demo)
        return
    uvloop.run(demo)


def main(config_path: str | None = None, *, free_ports: bool = False,
         load_rate: float = LOAD_RATE) -> int:
    """Entry point for `splitproxy demo`; returns the process exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
    # The state file beside the config changes at every check: not news for the terminal.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    if load_rate < 0:
        sys.stderr.write("--load must be 0 (none) or more requests per second\n")
        return 2
    try:
        _run(config_text(config_path), free_ports, load_rate)
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    except OSError as exc:
        # Most often a port that is already taken (8080, 9901, 9001 or 9002).
        log.error("demo failed to start: %s (try --free-ports)", exc)
        return 1
    return 0
