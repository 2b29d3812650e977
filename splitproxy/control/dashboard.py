"""The live dashboard on the admin port, as Argo Rollouts users get from `kubectl argo
rollouts dashboard`: one static page (HTML, JS, CSS shipped in `static/`, no build step, no
CDN) that updates itself from `/status` and acts through `POST /routes/{route}/{action}`.

The page and its script and style hold no data, so they are served without the admin token
(`PUBLIC_PATHS`); everything they show comes from `/status` and `/dashboard/plan`, which
need it like every admin endpoint (the page asks for it and keeps it in sessionStorage).
Strict headers keep the page from being framed (a click on abort must be the operator's)
or running anything but its own script.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

from splitproxy.config.models import Config

_STATIC = resources.files("splitproxy.control").joinpath("static")
_FILES = {
    "/dashboard": ("dashboard.html", "text/html"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css"),
}
PUBLIC_PATHS = frozenset({"/", *_FILES})  # "/" only redirects to the page

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str, content_type: str) -> Callable[[web.Request], Any]:
    body = _STATIC.joinpath(name).read_bytes()  # read once: a few KB

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8",
                            headers=HEADERS)

    return serve


def plan(config: Config) -> dict[str, Any]:
    """What /status does not say: every route's steps, for the timeline."""
    routes = {}
    for route in config.routes:
        steps: list[dict[str, float | str | None]] = []
        for step in route.rollout.steps if route.rollout is not None else ():
            if step.set_weight is not None:
                steps.append({"set_weight": step.set_weight})
            elif step.set_header_route is not None:
                steps.append({"set_header_route": step.set_header_route.describe()})
            elif step.set_mirror is not None:
                steps.append({"set_mirror": step.set_mirror.describe()})
            else:
                assert step.pause is not None
                steps.append({"pause": step.pause.duration})
        routes[route.name] = {"strategy": route.strategy, "steps": steps}
    return {"routes": routes}


def register(app: web.Application, config: Callable[[], Config]) -> None:
    """Add the dashboard's routes; `config` gives the config being served now."""
    for path, (name, content_type) in _FILES.items():
        app.router.add_get(path, _file(name, content_type))

    async def root(request: web.Request) -> web.Response:
        raise web.HTTPFound("/dashboard")

    app.router.add_get("/", root)

    async def get_plan(request: web.Request) -> web.Response:
        return web.json_response(plan(config()), headers={"Cache-Control": "no-store"})

    app.router.add_get("/dashboard/plan", get_plan)
