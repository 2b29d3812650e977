"""The admin API (aiohttp), on its own listener: the proxy port never serves it."""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from splitproxy.config.models import AdminConfig, ConfigError
from splitproxy.control import dashboard
from splitproxy.control.controller import Controller
from splitproxy.control.metrics import CONTENT_TYPE, exposition, make_registry
from splitproxy.rollout import ActionError

TOKEN_ENV = "SPLITPROXY_ADMIN_TOKEN"
CONTROLLER: web.AppKey[Controller] = web.AppKey("controller", Controller)


def is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(admin: AdminConfig, config_path: Path | None = None) -> str | None:
    """The bearer token from admin.token_file (relative to the config) or the environment.

    A non-loopback admin listener without a token is refused: the admin API can abort and
    promote rollouts.
    """
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    if admin.token_file:
        path = Path(admin.token_file)
        if not path.is_absolute() and config_path is not None:
            path = config_path.parent / path
        try:
            token = path.read_text().strip() or None
        except OSError as exc:
            raise ConfigError([f"admin.token_file: cannot read {path}: {exc.strerror}"]) from exc
        if token is None:
            raise ConfigError([f"admin.token_file: {path} is empty"])
    if token is None and not is_loopback(admin.listen):
        raise ConfigError([
            f"admin.listen: {admin.listen} is not a loopback address: set admin.token_file "
            f"or {TOKEN_ENV} so the admin API requires a bearer token"
        ])
    return token


def _auth_middleware(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: encode them back the
        # same way, so a non-UTF-8 header is a wrong token (401), not an exception (500).
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected) and request.path not in dashboard.PUBLIC_PATHS:
            return web.Response(status=401, text="401 Unauthorized: bearer token required\n",
                                headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    if controller.ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready: draining or not listening\n")


async def status(request: web.Request) -> web.Response:
    body = json.dumps(request.app[CONTROLLER].status(), indent=2)
    return web.Response(text=body + "\n", content_type="application/json")


ACTIONS = ("promote", "abort", "retry", "pause", "resume")
MAX_REASON = 500


async def action(request: web.Request) -> web.Response:
    """POST /routes/{route}/{action}: promote (?full=1), abort (?reason=...), retry, pause,
    resume. Never sets weights: the config is the desired state."""
    controller = request.app[CONTROLLER]
    name, verb = request.match_info["route"], request.match_info["action"]
    if verb not in ACTIONS:
        return web.json_response({"error": f"unknown action {verb!r}"}, status=404)
    full = request.query.get("full", "") in ("1", "true", "yes")
    reason = request.query.get("reason")
    if reason is not None and (len(reason) > MAX_REASON or not reason.isprintable()):
        # It is logged, kept in state and shown in /status: printable text only (the log
        # escapes control characters anyway; see logsafe).
        return web.json_response(
            {"error": f"reason must be printable text of at most {MAX_REASON} characters"},
            status=400)
    try:
        state = await controller.engine.act(name, verb, full=full, reason=reason)
    except KeyError:
        return web.json_response({"error": f"no route named {name!r}"}, status=404)
    except ActionError as exc:
        return web.json_response({"error": str(exc)}, status=409)
    return web.json_response({"route": name, "action": verb,
                              "rollout": controller.engine.describe(name, state)})


def make_app(controller: Controller, token: str | None) -> web.Application:
    app = web.Application(middlewares=[_auth_middleware(token)] if token else [])
    app[CONTROLLER] = controller
    registry = make_registry(controller)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=exposition(registry), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    app.router.add_post("/routes/{route}/{action}", action)
    dashboard.register(app, lambda: controller.config)
    return app


async def start_admin(controller: Controller, token: str | None) -> web.AppRunner:
    runner = web.AppRunner(make_app(controller, token), access_log=None)
    await runner.setup()
    host, _, port = controller.config.admin.listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The admin port actually bound (admin.listen may ask for port 0)."""
    server = runner.addresses[0]
    return int(server[1])
