"""`splitproxy check` against the rollout state: a config edit that would put traffic where
nobody watches it, behind or after a finished rollout.

A promoted rollout is final: the guard no longer reverts it. When its endpoints change but
`rollout.revision` does not, that is either scaling (fine) or a new build behind new
endpoints (which deserves a rollout of its own): `check` cannot tell, so it says so. When a
new rollout replaces a promoted one and sends traffic back to the old stable's endpoints,
unchanged since the promotion, the release was not ended (`rollout.release`): it says that
too.
"""

from __future__ import annotations

from pathlib import Path

from splitproxy.config.models import Backend, Config
from splitproxy.control.stores.store import FileStore, StateStore, Wanted, state_path
from splitproxy.rollout import Phase, endpoints, identity, release


def _store(config: Config, config_path: Path) -> StateStore:
    # Read only: no probe file, no lease taken (`load` needs neither).
    if config.state.backend == Backend.REDIS:
        from splitproxy.control.stores.redis_store import RedisStore

        return RedisStore(config.state.url, config.state.key_prefix, config.state.lease)
    return FileStore(state_path(config, config_path))


async def promoted_endpoint_warnings(config: Config, config_path: Path) -> list[str]:
    """One line per promoted route whose endpoints this config changes without a new
    `rollout.revision`, and per route whose promoted rollout this config replaces with one
    that sends traffic back to the old stable; a note when the state cannot be read."""
    routes = {r.name: r for r in config.routes if r.strategy == "canary"}
    if not routes:
        return []
    store = _store(config, config_path)
    try:
        loaded = await store.load({n: Wanted(identity(r)) for n, r in routes.items()})
        problem = store.describe().get("error") if loaded is None else None
        if isinstance(store, FileStore) and store.unreadable:
            problem = store.unreadable
    finally:
        await store.close()
    if loaded is None or problem:
        return [f"note: cannot read the rollout state ({problem}): cannot tell whether a "
                "promoted route's endpoints changed"]
    out = []
    for name, route in routes.items():
        got = loaded.get(name)
        if got is not None and got.state is None:
            out += [f"warning: route {name}: {r.message()}"
                    for r in release.regressions(got.previous, route)]
        state = got.state if got is not None else None
        if state is None or state.phase != Phase.PROMOTED or not state.endpoints:
            continue
        now = endpoints(route)
        changed = [f"{v}: {', '.join(state.endpoints.get(v, ())) or '-'} -> "
                   f"{', '.join(now.get(v, ())) or '-'}"
                   for v in sorted(set(now) | set(state.endpoints))
                   if tuple(now.get(v, ())) != tuple(state.endpoints.get(v, ()))]
        if changed:
            revision = route.rollout.revision if route.rollout else None
            out.append(
                f"warning: route {name}: the rollout (revision {revision or '-'}) is promoted "
                f"and these endpoints changed without a new rollout.revision: "
                f"{'; '.join(changed)}. Scaling needs nothing; a new build behind them would "
                "serve without a rollout: set rollout.revision (e.g. to the image tag).")
    return out
