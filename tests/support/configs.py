"""Config dicts for the proxy under test: one route, a whole file on test-friendly ports and
timeouts, a route with a rollout."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from .upstream import Upstream


def route(
    versions: Mapping[str, str | list[str]],
    weights: Mapping[str, int] | None = None,
    *,
    name: str = "shop",
    match: Mapping[str, str] | None = None,
    sticky: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One route dict; `versions` maps version -> endpoint URL(s). Default weights: all equal."""
    r: dict[str, Any] = {
        "name": name,
        "versions": {
            v: {"endpoints": [eps] if isinstance(eps, str) else list(eps)}
            for v, eps in versions.items()
        },
        "weights": dict(weights) if weights is not None else dict.fromkeys(versions, 1),
    }
    if match is not None:
        r["match"] = dict(match)
    if sticky is not None:
        r["sticky"] = dict(sticky)
    return r


def proxy_config(routes: Iterable[Mapping[str, Any]], **sections: Any) -> dict[str, Any]:
    """A full config dict on free ports with test-friendly timeouts; `sections` merge on top."""
    cfg: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "routes": [dict(r) for r in routes],
        "timeouts": {
            "connect": "2s",
            "response_header": "10s",
            "client_header": "10s",
            "idle": "60s",
            "drain": "5s",
        },
        "limits": {"max_header": 65536},
    }
    for key, value in sections.items():
        if isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg


def split_config(
    upstreams: Mapping[str, Upstream | str], stable: int = 90, canary: int = 10
) -> dict[str, Any]:
    """Route "shop" over stable and canary (upstreams or URLs) at these weights, sticky by the
    pin header only (no cookie: a client's requests are split, not held to one version)."""
    return rollout_config(upstreams, weights={"stable": stable, "canary": canary})


def rollout_config(
    upstreams: Mapping[str, Upstream | str],
    *,
    weights: dict[str, int] | None = None,
    analysis: dict[str, Any] | None = None,
    rollout: dict[str, Any] | None = None,
    sticky: dict[str, Any] | None = None,
    **route_fields: Any,
) -> dict[str, Any]:
    """Route "shop" over `upstreams` (or plain URLs; the first listed is the baseline), as a
    full config dict; sticky by the pin header only, unless `sticky` says otherwise."""
    urls = {n: u.url if isinstance(u, Upstream) else u for n, u in upstreams.items()}
    r = route(urls, weights,
              sticky=sticky or {"pin_header": "X-Splitproxy-Version"})
    if route_fields.get("strategy") == "blue-green":
        del r["weights"]
    if analysis is not None:
        r["analysis"] = analysis
    if rollout is not None:
        r["rollout"] = rollout
    r.update(route_fields)
    return proxy_config([r])
