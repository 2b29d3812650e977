"""`splitproxy demo`: two built-in upstreams and the proxy in front of them, in one process.

The upstreams are aiohttp applications (they are not on the proxied hot path, so aiohttp is the
right tool); the proxy is the real `ProxyServer` with `config/demo.yaml`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from splitproxy.config.models import ConfigError, load

log = logging.getLogger("splitproxy.cli.demo")

UPSTREAM_HOST = "127.0.0.1"
# The demo config points its versions at these; keep the two in step.
UPSTREAMS: dict[str, int] = {"stable": 9001, "canary": 9002}
DRAIN_SECONDS = 5.0

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"

# Used when the package is installed without the repository's config/ (a wheel, the image).
EMBEDDED_CONFIG = """\
listen: 127.0.0.1:8080
admin: {listen: 127.0.0.1:9901}
routes:
  - name: demo
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
      canary: {endpoints: ["http://127.0.0.1:9002"]}
    weights: {stable: 90, canary: 10}
    sticky:
      pin_header: X-Splitproxy-Version
      hash_header: X-User-Id
      cookie: splitproxy-demo
"""


def make_upstream_app(name: str) -> web.Application:
    """An upstream that answers every method and path with `served by <name>`."""

    async def handle(request: web.Request) -> web.Response:
        # Drain the body so a keep-alive connection stays clean for the next request.
        await request.read()
        return web.Response(
            text=f"served by {name}\n",
            headers={"X-Served-By": name, "X-Request-Path": request.path_qs},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def start_upstream(name: str, host: str, port: int) -> web.AppRunner:
    """Start `make_upstream_app(name)` on host:port; the caller cleans the runner up."""
    runner = web.AppRunner(make_upstream_app(name), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def banner(listen: str, cookie: str = "splitproxy-demo") -> str:
    """The "what to try" text printed once everything is up."""
    port = listen.rpartition(":")[2] or "8080"
    url = f"localhost:{port}/"
    jar = f"/tmp/{cookie}.jar"
    return f"""\
splitproxy demo: proxy on {listen}, stable on {UPSTREAM_HOST}:{UPSTREAMS["stable"]}, \
canary on {UPSTREAM_HOST}:{UPSTREAMS["canary"]}

Try, in another terminal:

  # weighted split (90/10): count who answered 20 requests
  for i in $(seq 20); do curl -s {url}; done | sort | uniq -c

  # pin header: always the version you name, even at weight 0
  curl -s -H 'X-Splitproxy-Version: canary' {url}

  # hash key: the same user id always lands on the same version
  curl -s -H 'X-User-Id: alice' {url}

  # sticky cookie: the first answer sets it, later requests keep that version
  for i in 1 2 3; do curl -s -c {jar} -b {jar} {url}; done

  # the admin API (127.0.0.1:9901): weights, realized split, health, metrics
  .venv/bin/splitproxy status --admin http://127.0.0.1:9901
  curl -s localhost:9901/metrics | grep splitproxy_requests_total
  # edit config/demo.yaml (say, canary: 50) and the split follows within a second

Ctrl-C stops the demo.
"""


@contextlib.contextmanager
def _config_file(config_path: str | None) -> Iterator[str]:
    """The demo config to use: the given path, the repository's, or the embedded copy."""
    if config_path is not None:
        yield config_path
        return
    if DEFAULT_CONFIG.is_file():
        yield str(DEFAULT_CONFIG)
        return
    log.info("%s not found; using the embedded demo config", DEFAULT_CONFIG)
    with tempfile.TemporaryDirectory(prefix="splitproxy-demo-") as tmp:
        path = Path(tmp) / "demo.yaml"
        path.write_text(EMBEDDED_CONFIG, encoding="utf-8")
        yield str(path)


def _install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not available on every platform (Windows); Ctrl-C then cancels the main task instead.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def run_demo(config_path: str, stop: asyncio.Event | None = None) -> None:
    """Run the upstreams and the proxy until `stop` is set (by default: SIGINT or SIGTERM)."""
    # Imported here so the upstream half of this module works without the server wiring.
    from splitproxy.control.service import Service

    config = load(config_path)
    if stop is None:
        stop = asyncio.Event()
        _install_stop_signals(stop)

    runners: list[web.AppRunner] = []
    try:
        for name, port in UPSTREAMS.items():
            runners.append(await start_upstream(name, UPSTREAM_HOST, port))
            log.info("upstream %s listening on %s:%d", name, UPSTREAM_HOST, port)
        server = Service(config_path)
        await server.start()
        try:
            cookie = next((r.sticky.cookie for r in config.routes if r.sticky.cookie), None)
            sys.stdout.write(banner(config.listen, cookie or "splitproxy-demo"))
            sys.stdout.flush()
            await stop.wait()
            log.info("stopping: draining for up to %.0fs", DRAIN_SECONDS)
        finally:
            await server.stop(drain=DRAIN_SECONDS)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
    log.info("demo stopped")


def _run(config_path: str) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(run_demo(config_path))
        return
    uvloop.run(run_demo(config_path))


def main(config_path: str | None = None) -> int:
    """Entry point for `splitproxy demo`; returns the process exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
    with _config_file(config_path) as path:
        try:
            _run(path)
        except KeyboardInterrupt:
            pass
        except ConfigError as exc:
            sys.stderr.write(f"{exc}\n")
            return 1
        except OSError as exc:
            # Most often a port that is already taken (8080, 9901, 9001 or 9002).
            log.error("demo failed to start: %s", exc)
            return 1
    return 0
