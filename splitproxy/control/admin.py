"""The admin API (aiohttp), on its own listener: the proxy port never serves it."""

from __future__ import annotations

from aiohttp import web

from splitproxy.control import dashboard
from splitproxy.control.adminguard import AdminGuard
from splitproxy.control.controller import Controller
from splitproxy.control.metrics import CONTENT_TYPE, exposition, make_registry
from splitproxy.control.status import ActionResult, to_json
from splitproxy.rollout import Action, ActionError

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
    body = to_json(request.app[CONTROLLER].status())
    return web.Response(text=body + "\n", content_type="application/json")


MAX_REASON = 500


async def action(request: web.Request) -> web.Response:
    """POST /routes/{route}/{action}: promote (?full=1), abort (?reason=...), retry, pause,
    resume. Never sets weights: the config is the desired state."""
    controller = request.app[CONTROLLER]
    name, verb = request.match_info["route"], request.match_info["action"]
    try:
        kind = Action(verb)
    except ValueError:
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
        state = await controller.engine.act(name, kind, full=full, reason=reason)
    except KeyError:
        return web.json_response({"error": f"no route named {name!r}"}, status=404)
    except ActionError as exc:
        return web.json_response({"error": str(exc)}, status=409)
    result = ActionResult(route=name, action=kind, rollout=controller.engine.describe(name, state))
    return web.Response(text=result.model_dump_json(), content_type="application/json")


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
    dashboard.register(app, lambda: controller.config)
    guard.public.update(dashboard.PUBLIC_PATHS)
    return app


async def start_admin(controller: Controller, guard: AdminGuard) -> web.AppRunner:
    runner = web.AppRunner(make_app(controller, guard), access_log=None)
    await runner.setup()
    listen = controller.config.admin.listen
    site = web.TCPSite(runner, listen.host, listen.port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The admin port actually bound (admin.listen may ask for port 0)."""
    server = runner.addresses[0]
    return int(server[1])
