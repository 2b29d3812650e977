"""The hot path's cost, counted: CPU instructions per proxied request under callgrind.

    python -m loadtests.costgate                  # measure, compare with the budget, exit 1 if over
    python -m loadtests.costgate --write-budget   # measure and record the budget
    python -m loadtests.costgate --features       # what each feature costs (a table; no gate)
    python -m loadtests.costgate --compiled [--write-budget]   # the same on build/compiled

`--compiled` measures the data plane built with mypyc (`make compiled`, loadtests/compiled.py)
against its own budget (costgate_budget_compiled.json); the proxy refuses to start unless it
really runs the compiled modules.

Seconds are noisy on a shared 2-core machine; instructions are not. One data-plane process (the
same `ProxyServer` a worker runs, nothing of the control plane) runs under valgrind's callgrind
with instrumentation off; a client warms it up, `callgrind_control` switches counting on, the
client sends a fixed number of requests on one keep-alive connection, one at a time, and counting
goes off again. Everything the process executes in between is counted -- Python, uvloop,
httptools, the kernel-call wrappers in libc -- so a regression in C glue shows as well as one in
Python. The upstream is a tiny asyncio server in another process (not counted).

Each workload is counted twice on its own connection, over `SHORT` and `LONG` requests; the cost
per request is the difference divided by the difference in count, which cancels what a
measurement costs once (the toggles and dumps). What is left varies only with the proxy's timers
(its timeout sweeper wakes once a second): a few hundred instructions per second of wall time,
about 0.1% of a run. The budget allows `TOLERANCE` on top of that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loadtests import compiled as build
from loadtests.harness import read_response

REPO = Path(__file__).resolve().parent.parent
BUDGET = REPO / "loadtests" / "costgate_budget.json"
BUDGET_COMPILED = REPO / "loadtests" / "costgate_budget_compiled.json"
TOLERANCE = 0.03  # a measured cost up to 3% over the budget passes
WARMUP = 300
SHORT, LONG = 100, 400
BODY = b"x" * 4096


@dataclass(frozen=True)
class Workload:
    name: str
    request: bytes  # one whole request, sent as is on a keep-alive connection
    response_body: int  # bytes the upstream answers with


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: shop.local\r\nUser-Agent: costgate\r\n" \
           "Accept: */*\r\n\r\n".encode()


# `--features`: the small GET again with one feature switched on (or, for the counters, off),
# each as (top-level config lines, lines of the route, environment of the proxy).
FEATURES: dict[str, tuple[str, str, dict[str, str]]] = {
    "as configured here (none of the below)": ("", "", {}),
    "guard: error rate + 3 latency limits": (
        "", "    analysis: {max_error_rate: 0.01, max_p50_ms: 100, max_p90_ms: 150, "
        "max_p99_ms: 200}\n", {}),
    "access log on (text, to a file)": ("logging: {access_log: true}\n", "", {}),
    "per-version counters off": ("", "", {"SPLITPROXY_BENCH_NO_STATS": "1"}),
    "shadow: 100% copied to canary": ("", "    mirror: {to: canary, percent: 100}\n", {}),
    "shadow: 10% copied, bodies compared": (
        "", "    mirror: {to: canary, percent: 10, compare: {body: true}}\n", {}),
}

WORKLOADS = (
    Workload("get-small", _get("/api/items?id=1"), 64),
    Workload("post-4k", b"POST /api/orders HTTP/1.1\r\nHost: shop.local\r\nContent-Type: "
             b"application/json\r\nContent-Length: 4096\r\n\r\n" + BODY, 64),
    Workload("get-16k", _get("/static/page"), 16384),
)


# --- the processes ----------------------------------------------------------------------------

def _upstream_main(port_file: str) -> None:
    """A minimal keep-alive HTTP/1.1 server: the body size comes from the path."""
    sizes = {w.request.split(b" ", 2)[1].split(b"?")[0]: w.response_body for w in WORKLOADS}

    class Upstream(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head = self.buffer[:end]
                match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                length = int(match[1]) if match else 0
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length:]
                path = head.split(b" ", 2)[1].split(b"?")[0]
                body = b"y" * sizes.get(path, 64)
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Upstream, "127.0.0.1", 0)
        Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
        await asyncio.Event().wait()

    asyncio.run(serve())


def _proxy_main(config_path: str, port_file: str) -> None:
    """One data-plane process, as a worker runs it, and nothing else."""
    import uvloop

    from splitproxy.config import logformat
    from splitproxy.config.models import load
    from splitproxy.dataplane import build
    from splitproxy.dataplane.server import ProxyServer

    if os.environ.get("SPLITPROXY_EXPECT_COMPILED") == "1" and not build.compiled():
        raise SystemExit("costgate: a compiled run, but the data plane is interpreted")
    config = load(config_path)
    logformat.configure(config.logging.format)  # to stderr: a file (/dev/null) here

    async def serve() -> None:
        server = ProxyServer(config)
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        Path(port_file).write_text(str(server.port))
        await stop.wait()
        await server.stop(drain=0.0)

    uvloop.run(serve())


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text()).strip():
            return int(text)
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"{proc.args!r} did not start in {timeout} s")


@contextmanager
def _process(argv: list[str], env: dict[str, str] | None = None
             ) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- the client -------------------------------------------------------------------------------

def _exchange(sock: socket.socket, request: bytes) -> None:
    """Send one request and read its whole answer (Content-Length framed)."""
    sock.sendall(request)
    read_response(sock, bytearray())


def _callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)


def _config(tmp: Path, upstream_port: int, top: str = "", route: str = "") -> Path:
    config = tmp / "costgate.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\nadmin: {listen: '127.0.0.1:0'}\n"
        # Off: polling's cost is CPU time, which depends on the clock; the bench measures it.
        "performance: {busy_poll: 0s}\n" + top + "routes:\n"
        "  - name: shop\n    versions:\n"
        f"      stable: {{endpoints: ['http://127.0.0.1:{upstream_port}']}}\n"
        f"      canary: {{endpoints: ['http://127.0.0.1:{upstream_port}']}}\n"
        "    weights: {stable: 90, canary: 10}\n" + route)
    return config


def _counted(pid: int, out: Path, sock: socket.socket, request: bytes, n: int) -> int:
    """Instructions for `n` exchanges: counting on from zero, a dump, counting off."""
    _callgrind_control("--zero", pid)
    _callgrind_control("--instr=on", pid)
    for _ in range(n):
        _exchange(sock, request)
    _callgrind_control("--dump", pid)
    _callgrind_control("--instr=off", pid)
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: int(p.suffix[1:]))
    match = _TOTALS.search(dumps[-1].read_text())
    if match is None:
        raise RuntimeError(f"no totals in {dumps[-1]}")
    return int(match[1])


def measure(workloads: tuple[Workload, ...] = WORKLOADS, top: str = "", route: str = "",
            env_extra: dict[str, str] | None = None, compiled: bool = False
            ) -> dict[str, float]:
    """Instructions per request, per workload, all in one proxy process under callgrind;
    `top` and `route` are config lines added at the top level and to the route; `compiled`:
    the proxy runs build/compiled (RuntimeError if it is not built)."""
    if compiled:
        if (problem := build.missing_build()) is not None:
            raise RuntimeError(problem)
        env_extra = {**build.run_env(), **(env_extra or {})}
    with tempfile.TemporaryDirectory(prefix="costgate-") as name:
        tmp = Path(name)
        upstream_file, proxy_file = tmp / "upstream.port", tmp / "proxy.port"
        out = tmp / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
               **(env_extra or {})}
        with _process([sys.executable, "-m", "loadtests.costgate", "upstream",
                       str(upstream_file)]) as upstream:
            config = _config(tmp, _wait_file(upstream_file, upstream, timeout=30), top, route)
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}", "--trace-children=no", sys.executable,
                    "-m", "loadtests.costgate", "proxy", str(config), str(proxy_file)]
            with _process(argv, env=env) as proxy:
                port = _wait_file(proxy_file, proxy, timeout=180)
                costs: dict[str, float] = {}
                for w in workloads:
                    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        for _ in range(WARMUP):
                            _exchange(sock, w.request)
                        short = _counted(proxy.pid, out, sock, w.request, SHORT)
                        long = _counted(proxy.pid, out, sock, w.request, LONG)
                    costs[w.name] = (long - short) / (LONG - SHORT)
                return costs


def compare(measured: dict[str, float], budget: dict[str, float]) -> list[str]:
    """One line per workload over its budget (empty: within budget)."""
    over = []
    for name, cost in measured.items():
        limit = budget.get(name)
        if limit is None:
            over.append(f"{name}: no budget recorded (run with --write-budget)")
        elif cost > limit * (1 + TOLERANCE):
            over.append(f"{name}: {cost:,.0f} instructions per request, budget {limit:,.0f} "
                        f"(+{100 * (cost / limit - 1):.1f}%, tolerance {100 * TOLERANCE:.0f}%)")
    return over


def features_markdown(compiled: bool = False) -> str:
    """Instructions per small GET with each of FEATURES, and the difference to the first."""
    lines = ["| feature | instructions per request | vs none |", "| --- | ---: | ---: |"]
    base = None
    for name, (top, route, env) in FEATURES.items():
        cost = measure(WORKLOADS[:1], top, route, env, compiled)[WORKLOADS[0].name]
        base = cost if base is None else base
        lines.append(f"| {name} | {cost:,.0f} | {cost - base:+,.0f} "
                     f"({100 * (cost / base - 1):+.1f}%) |")
    return "\n".join(lines)


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["upstream"]:
        _upstream_main(args[1])
        return 0
    if args[:1] == ["proxy"]:
        _proxy_main(args[1], args[2])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--write-budget", action="store_true",
                   help=f"record the measured costs as the budget ({BUDGET.name}, or "
                   f"{BUDGET_COMPILED.name} with --compiled)")
    p.add_argument("--features", action="store_true",
                   help="print what each feature costs on the small GET (no gate)")
    p.add_argument("--compiled", action="store_true",
                   help=f"the compiled build (make compiled), against {BUDGET_COMPILED.name}")
    opts = p.parse_args(args)
    budget = BUDGET_COMPILED if opts.compiled else BUDGET
    if opts.compiled and (problem := build.missing_build()) is not None:
        print(f"costgate: {problem}", file=sys.stderr)
        return 2
    if not available():
        print("costgate: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    if opts.features:
        print(features_markdown(opts.compiled))
        return 0
    measured = measure(compiled=opts.compiled)
    for name, cost in measured.items():
        print(f"{name:10s} {cost:12,.0f} instructions per request")
    if opts.write_budget:
        budget.write_text(json.dumps({k: round(v) for k, v in measured.items()}, indent=2) + "\n")
        print(f"budget written to {budget}")
        return 0
    over = compare(measured, json.loads(budget.read_text()) if budget.exists() else {})
    for line in over:
        print("over budget:", line, file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
