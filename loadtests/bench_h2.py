"""HTTP/2 benchmark: splitproxy against nginx doing the same, in the same run; ratios to nginx.

A benchmark, not a test. On 127.0.0.1 and free ports, one worker each:

* ``h2c``: HTTP/2 downstream by prior knowledge, HTTP/1.1 upstream (the nginx upstream of
  `bench.py`): splitproxy against nginx ``listen ... http2`` with ``proxy_pass`` (nginx 1.22
  cannot proxy plain HTTP/2 upstream, so this row is HTTP/1.1 upstream for both). Load:
  `h2load.py` (h2load is not installed here; a Python generator on the `h2` library,
  ``--connections`` x ``--streams`` GET streams in flight).
* ``grpc``: gRPC unary calls end to end, to a grpcio echo server: splitproxy with
  ``protocol: h2`` against nginx ``grpc_pass``. Load: `grpcload.py` (grpcio's asyncio
  client, ``--concurrency`` calls in flight on one channel).
* memory per idle HTTP/2 connection: each proxy's RSS while ``--idle-connections`` idle h2c
  connections (preface and SETTINGS exchanged) are held open.

Both load generators are Python and share the two cores with the proxies: they bound what
they measure, the same for both targets, so read the ratios.

    python loadtests/bench_h2.py [--duration 5] [--rounds 3] [--idle-connections 1000]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

try:
    from loadtests import bench
    from loadtests.idle_clients import raise_nofile, rss_tree
except ImportError:  # run as `python loadtests/bench_h2.py`
    import bench  # type: ignore[import-not-found,no-redef]
    from idle_clients import raise_nofile, rss_tree  # type: ignore[import-not-found,no-redef]

HOST = bench.HOST
SPLITPROXY = "splitproxy"

NginxConf = Callable[[Path, str, str, int], Path]


def _nginx_conf_writer() -> NginxConf:
    """The benches' nginx.conf writer: `loadtests/nginxconf.main_conf` on main, bench.py's
    `_nginx_conf` before it (looked up by name, so this file checks against either; once
    merged, `from loadtests.nginxconf import main_conf` is all it needs)."""
    for name in ("loadtests.nginxconf", "nginxconf"):  # as a module, or run as a script
        try:
            return cast(NginxConf, vars(importlib.import_module(name))["main_conf"])
        except ImportError:
            continue
    return cast(NginxConf, vars(bench)["_nginx_conf"])


nginx_conf = _nginx_conf_writer()


def wait_port(children: bench.Children, name: str, proc: subprocess.Popen[bytes],
              port: int) -> None:
    deadline = time.monotonic() + bench.START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{children.log_tail(name)}")
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port}:\n{children.log_tail(name)}")


def start_nginx_h2(children: bench.Children, nginx: str, tmp: Path, name: str, upstream: int,
                   location: str, connections: int) -> int:
    port = bench.free_port()
    block = f"""
        upstream backend {{
            server {HOST}:{upstream};
            keepalive 64;
            keepalive_requests 100000000;
        }}
        server {{
            listen {HOST}:{port} http2;
            http2_max_concurrent_streams 100;
            location / {{
                {location}
            }}
        }}
    """
    conf = nginx_conf(tmp, name, block, connections)
    argv = [nginx, "-e", str(tmp / f"{name}-error.log"), "-p", str(tmp), "-c", str(conf),
            "-g", "daemon off;"]
    proc = children.start(name, argv)
    wait_port(children, name, proc, port)
    return port


def start_splitproxy_grpc(children: bench.Children, tmp: Path, upstream: int) -> int:
    port, admin = bench.free_port(), bench.free_port()
    config = tmp / "grpc-config" / "config.yaml"
    config.parent.mkdir()
    config.write_text(textwrap.dedent(f"""\
        listen: {HOST}:{port}
        admin: {{listen: {HOST}:{admin}}}
        routes:
          - name: bench
            versions:
              stable: {{endpoints: ["http://{HOST}:{upstream}"], protocol: h2}}
              canary: {{endpoints: ["http://{HOST}:{upstream}"], protocol: h2}}
            weights: {{stable: 90, canary: 10}}
        """))
    name = f"{SPLITPROXY}-grpc"
    proc = children.start(name, [sys.executable, "-m", "splitproxy", "run", "-c", str(config)])
    wait_port(children, name, proc, port)
    return port


def load(argv: list[str], timeout: float) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=bench.REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def idle_memory(children: bench.Children, target: str, pid: int, port: int,
                count: int) -> dict[str, Any]:
    before, _ = rss_tree(pid)
    name = f"idle-{target}"
    proc = children.start(name, [sys.executable, "-m", "loadtests.h2load", str(port),
                                 "--idle", str(count)])
    log = children.logdir / f"{name}.log"
    deadline = time.monotonic() + 120
    while b'"held"' not in (log.read_bytes() if log.exists() else b""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} failed:\n{children.log_tail(name)}")
        time.sleep(0.1)
    time.sleep(0.5)
    after, _ = rss_tree(pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    return {"target": target, "connections": count, "before_mb": before * 1024 / 1e6,
            "after_mb": after * 1024 / 1e6,
            "per_conn_kb": (after - before) * 1024 / 1e3 / count}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run (5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    p.add_argument("--connections", type=int, default=16, help="h2 connections (16)")
    p.add_argument("--streams", type=int, default=8, help="streams in flight each (8)")
    p.add_argument("--concurrency", type=int, default=32, help="gRPC calls in flight (32)")
    p.add_argument("--idle-connections", type=int, default=1000,
                   help="idle h2c connections held for the memory figure (0: skip)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = bench.prepare_run()
    if tools is None:
        return 2
    _, nginx = tools
    raise_nofile(args.idle_connections + 4096)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    memory: list[dict[str, Any]] = []
    conns = max(4096, args.idle_connections + 1024)
    with tempfile.TemporaryDirectory(prefix="splitproxy-bench-h2-") as tmpdir:
        tmp = Path(tmpdir)
        children = bench.Children(tmp)
        try:
            upstream = bench.start_nginx_upstream(children, nginx, tmp)
            grpc_up = bench.free_port()
            proc = children.start("grpc-upstream", [sys.executable, "-m", "loadtests.grpcload",
                                                    str(grpc_up), "--serve"])
            wait_port(children, "grpc-upstream", proc, grpc_up)
            ports = {
                ("h2c", SPLITPROXY): bench.start_splitproxy(children, tmp, upstream),
                ("h2c", bench.NGINX_PROXY): start_nginx_h2(
                    children, nginx, tmp, "nginx-h2", upstream,
                    "proxy_pass http://backend; proxy_http_version 1.1; "
                    "proxy_set_header Connection \"\"; proxy_set_header Host $http_host; "
                    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; "
                    "proxy_set_header X-Forwarded-Proto $scheme;", conns),
                ("grpc", SPLITPROXY): start_splitproxy_grpc(children, tmp, grpc_up),
                ("grpc", bench.NGINX_PROXY): start_nginx_h2(
                    children, nginx, tmp, "nginx-grpc", upstream,
                    f"grpc_pass grpc://{HOST}:{grpc_up};", conns),
            }
            if args.idle_connections:
                pids = {name: p.pid for name, p in children.procs}
                for target, name in ((SPLITPROXY, SPLITPROXY),
                                     (bench.NGINX_PROXY, "nginx-h2")):
                    memory.append(idle_memory(children, target, pids[name],
                                              ports[("h2c", target)], args.idle_connections))
            runs = list(ports)
            for rnd in range(args.rounds):
                k = rnd % len(runs)
                for kind, target in runs[k:] + runs[:k]:
                    port = ports[(kind, target)]
                    if kind == "h2c":
                        argv_ = ["loadtests.h2load", str(port), "--connections",
                                 str(args.connections), "--streams", str(args.streams),
                                 "--duration", str(args.duration)]
                    else:
                        argv_ = ["loadtests.grpcload", str(port), "--concurrency",
                                 str(args.concurrency), "--duration", str(args.duration)]
                    got = load(argv_, args.duration + 60)
                    results.setdefault((kind, target), []).append(got)
                    sys.stderr.write(f"bench-h2: {kind} {target} round {rnd + 1}: "
                                     f"{got['rps']:,.0f} req/s, p99 {got['p99_ms']:.2f} ms, "
                                     f"{got['errors']} errors\n")
        except RuntimeError as exc:
            sys.stderr.write(f"bench-h2: {exc}\n")
            return 1
        finally:
            children.stop_all()
    sys.stdout.write(report(results, args, memory))
    return 0


def report(results: dict[tuple[str, str], list[dict[str, Any]]], args: argparse.Namespace,
           memory: list[dict[str, Any]]) -> str:
    lines = [f"splitproxy HTTP/2 benchmark: h2c {args.connections} connections x "
             f"{args.streams} streams, gRPC {args.concurrency} calls in flight, "
             f"{args.duration:g}s per run, median of {args.rounds} interleaved round(s); "
             f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}", "",
             "| row | target | req/s | p50 | p99 | req/s vs nginx | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]

    def med(key: tuple[str, str], field: str) -> float:
        return float(statistics.median(r[field] for r in results[key]))

    for kind, target in sorted(results):
        ref = med((kind, bench.NGINX_PROXY), "rps")
        lines.append(f"| {kind} | {target} | {med((kind, target), 'rps'):,.0f} "
                     f"| {med((kind, target), 'p50_ms'):.2f} ms "
                     f"| {med((kind, target), 'p99_ms'):.2f} ms "
                     f"| {med((kind, target), 'rps') / ref:.2f}x "
                     f"| {sum(r['errors'] for r in results[(kind, target)])} |")
    if memory:
        lines += ["", "| target | idle h2c conns | RSS before | RSS with them | per connection |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for m in memory:
            lines.append(f"| {m['target']} | {m['connections']:,} | {m['before_mb']:.1f} MB "
                         f"| {m['after_mb']:.1f} MB | {m['per_conn_kb']:.1f} kB |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
