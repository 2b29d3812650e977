"""The modules every proxied request runs through: what the compiled data plane compiles.

One list, read by every build of it: `make compiled` (loadtests/compiled.py), the image's wheel
(setup.py with SPLITPROXY_MYPYC=1) and the tests that check what each one built. setup.py runs
this file by path in a bare build environment, before splitproxy is importable: so it imports
nothing and holds plain data only.
"""

HOT_MODULES: tuple[str, ...] = (
    "splitproxy.dataplane.http.request",
    "splitproxy.dataplane.http.response",
    "splitproxy.dataplane.http.headers",
    "splitproxy.dataplane.http.requestid",
    "splitproxy.dataplane.http.dispatch",
    "splitproxy.dataplane.http.lifecycle",
    "splitproxy.dataplane.http.exchange",
    "splitproxy.dataplane.http.flow",
    "splitproxy.dataplane.http.health",
    "splitproxy.dataplane.http.pool",
    "splitproxy.dataplane.http.runtime",
    "splitproxy.dataplane.http.downstream",
    "splitproxy.dataplane.http.upstream",
    "splitproxy.dataplane.http.connection",
    "splitproxy.dataplane.http.batch",
    "splitproxy.dataplane.http.busypoll",
    "splitproxy.dataplane.http.mirror",
    "splitproxy.dataplane.http.accesslog",
    "splitproxy.dataplane.http.state",
    "splitproxy.dataplane.http.listener",
    "splitproxy.dataplane.http.local",
    "splitproxy.dataplane.http.accesslines",
    "splitproxy.dataplane.http.peer",
    "splitproxy.routing.table",
    "splitproxy.dataplane.stats",
    "splitproxy.config.paths",
    "splitproxy.routing.choose",
    "splitproxy.routing.steer",
)


# How both builds call mypyc: the repository's mypy configuration (pyproject.toml, so the
# compiled code is typed exactly as `make typecheck` checks it), and mypyc's own defaults for
# the C compiler's optimisation and debug levels (-O3, -g1), spelled out so they cannot drift.
MYPY_ARGS: tuple[str, ...] = ("--config-file", "pyproject.toml")
OPT_LEVEL = "3"
DEBUG_LEVEL = "1"


def source_path(module: str) -> str:
    """`splitproxy.routing.choose` -> `splitproxy/routing/choose.py` (relative)."""
    return module.replace(".", "/") + ".py"
