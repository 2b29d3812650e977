"""The admin API (aiohttp), on its own listener: the proxy port never serves it."""

from __future__ import annotations

import json

from aiohttp import web

from splitproxy.control.adminguard import AdminGuard
from splitproxy.control.controller import Controller
from splitproxy.control.metrics import CONTENT_TYPE, exposition, make_registry
from splitproxy.rollout import ActionError

CONTROLLER: web.AppKey[Controller] = web.AppKey("controller", Controller)
GUARD: web.AppKey[AdminGuard] = web.AppKey("guard", AdminGuard)


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


def make_app(controller: Controller, guard: AdminGuard) -> web.Application:
    """The admin API; `guard` (Host, browser and token rules, see adminguard) answers first."""
    app = web.Application(middlewares=[guard.middleware()])
    app[CONTROLLER] = controller
    app[GUARD] = guard
    registry = make_registry(controller)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=exposition(registry), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    app.router.add_post("/routes/{route}/{action}", action)
    return app


async def start_admin(controller: Controller, guard: AdminGuard) -> web.AppRunner:
    runner = web.AppRunner(make_app(controller, guard), access_log=None)
    await runner.setup()
    host, _, port = controller.config.admin.listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The admin port actually bound (admin.listen may ask for port 0)."""
    server = runner.addresses[0]
    return int(server[1])
