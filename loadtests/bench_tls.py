"""TLS benchmark: splitproxy terminating TLS against nginx terminating TLS, both in front of the
same tiny upstream, in the same run; ratios to nginx.

A benchmark, not a test. It starts, on 127.0.0.1 and free ports, the nginx upstream of
`bench.py`, then splitproxy (one worker) and nginx (one worker) each with a plaintext and a
TLS listener (one ECDSA P-256 certificate made by trustme, TLS 1.3 negotiated), and runs wrk,
interleaved over ``--rounds``:

* ``keep-alive``: ``wrk -c64`` on kept-alive connections: req/s over TLS (and over cleartext on
  the same processes, to show what TLS costs each);
* ``new-conn``: ``wrk -c64 -H "Connection: close"``: every request is a new connection and a
  full handshake, so req/s is new TLS connections per second (no session resumption: wrk does
  not resume).

Then memory per idle TLS connection: each proxy's RSS while ``--idle-connections`` idle TLS
keep-alive connections are held open (`idle_clients.py --tls`).

    python loadtests/bench_tls.py [--duration 5] [--rounds 3] [--idle-connections 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

try:
    from loadtests import bench, nginxconf
    from loadtests.idle_clients import measure_idle, memory_markdown, raise_nofile
except ImportError:  # run as `python loadtests/bench_tls.py`
    import bench  # type: ignore[import-not-found,no-redef]
    import nginxconf  # type: ignore[import-not-found,no-redef]
    from idle_clients import (  # type: ignore[import-not-found,no-redef]
        measure_idle,
        memory_markdown,
        raise_nofile,
    )

HOST = bench.HOST
MODES = ("keep-alive", "new-conn")
TLS_TARGET = "splitproxy-tls"  # not "splitproxy": bench.py judges that row against 10k plaintext


def make_certificate(tmp: Path) -> tuple[Path, Path]:
    import trustme  # a test dependency: `make bench` runs in the test venv

    leaf = trustme.CA().issue_cert("localhost", "127.0.0.1")
    cert, key = tmp / "bench.pem", tmp / "bench.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def start_splitproxy_tls(children: bench.Children, tmp: Path, upstream: int, cert: Path,
                         key: Path) -> tuple[int, int]:
    plain, secure, admin = bench.free_port(), bench.free_port(), bench.free_port()
    config = tmp / "splitproxy-tls.yaml"
    config.write_text(textwrap.dedent(f"""\
        listen:
          - {HOST}:{plain}
          - address: {HOST}:{secure}
            tls: {{certificates: [{{cert: {cert}, key: {key}}}]}}
        admin: {{listen: {HOST}:{admin}}}
        routes:
          - name: bench
            versions:
              stable: {{endpoints: ["http://{HOST}:{upstream}"]}}
              canary: {{endpoints: ["http://{HOST}:{upstream}"]}}
            weights: {{stable: 90, canary: 10}}
        """))
    proc = children.start(TLS_TARGET, [sys.executable, "-m", "splitproxy", "run", "-c",
                                       str(config)])
    bench.wait_ready(children, TLS_TARGET, proc, plain)
    return plain, secure


def start_nginx_tls(children: bench.Children, nginx: str, tmp: Path, upstream: int, cert: Path,
                    key: Path, connections: int) -> tuple[int, int]:
    secure = bench.free_port()
    block = nginxconf.proxy(upstream, [f"{HOST}:{{port}}", f"{HOST}:{secure} ssl"],
                            nginxconf.tls(cert, key))
    plain = bench.start_nginx(children, nginx, tmp, bench.NGINX_PROXY, block, connections)
    return plain, secure


def run_wrk(wrk: str, url: str, connections: int, duration: float, close: bool) -> str:
    argv = [wrk, "-t2", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=duration + 30,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} {url} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=bench.wrk_seconds, default=5, help="seconds per wrk run (5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    p.add_argument("--connections", type=int, default=64, help="wrk -c (64)")
    p.add_argument("--idle-connections", type=int, default=2000,
                   help="idle TLS connections held for the memory figure (2000; 0: skip)")
    args = p.parse_args(argv)
    if args.duration < 1 or args.rounds < 1 or args.connections < 1 or args.idle_connections < 0:
        p.error("--duration, --rounds and --connections must be >= 1, --idle-connections >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = bench.prepare_run()
    if tools is None:
        return 2
    wrk, nginx = tools
    raise_nofile(args.idle_connections + 4096)
    samples: dict[tuple[str, str, str], list[bench.Sample]] = {}
    memory: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="splitproxy-bench-tls-") as tmpdir:
        tmp = Path(tmpdir)
        children = bench.Children(tmp)
        try:
            cert, key = make_certificate(tmp)
            upstream = bench.start_nginx_upstream(children, nginx, tmp)
            ports = {
                TLS_TARGET: start_splitproxy_tls(children, tmp, upstream, cert, key),
                bench.NGINX_PROXY: start_nginx_tls(children, nginx, tmp, upstream, cert, key,
                                                   max(4096, args.idle_connections + 1024)),
            }
            if args.idle_connections:
                pids = {name: proc.pid for name, proc in children.procs}
                for target in ports:
                    memory.append(measure_idle(children, target, pids[target],
                                               ports[target][1], args.idle_connections, True))
            runs = [(mode, scheme, target) for mode in MODES for scheme in ("https", "http")
                    for target in ports]
            for rnd in range(args.rounds):
                k = rnd % len(runs)
                for mode, scheme, target in runs[k:] + runs[:k]:
                    plain, secure = ports[target]
                    port = secure if scheme == "https" else plain
                    out = run_wrk(wrk, f"{scheme}://{HOST}:{port}/", args.connections,
                                  args.duration, mode == "new-conn")
                    sample = bench.parse_wrk(out, target, args.connections, rnd + 1)
                    samples.setdefault((mode, scheme, target), []).append(sample)
                    sys.stderr.write(f"bench-tls: {mode} {scheme} {target} round {rnd + 1}: "
                                     f"{sample.rps:,.0f} req/s, p99 {sample.p99_ms:.2f} ms\n")
        except RuntimeError as exc:
            sys.stderr.write(f"bench-tls: {exc}\n")
            return 1
        finally:
            children.stop_all()
    sys.stdout.write(report(samples, args, memory))
    return 0


def report(samples: dict[tuple[str, str, str], list[bench.Sample]], args: argparse.Namespace,
           memory: list[dict[str, Any]]) -> str:
    lines = [f"splitproxy TLS benchmark: wrk -t2 -c{args.connections} -d{args.duration:g}s, "
             f"median of {args.rounds} interleaved round(s); {os.cpu_count()} CPUs; "
             f"{time.strftime('%Y-%m-%d')}", "",
             "| mode | scheme | target | req/s | p99 | req/s vs nginx | TLS vs cleartext | "
             "errors |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]

    def rps(key: tuple[str, str, str]) -> float:
        return statistics.median(s.rps for s in samples[key])

    for mode, scheme, target in sorted(samples):
        got = samples[(mode, scheme, target)]
        ref = rps((mode, scheme, bench.NGINX_PROXY))
        clear = rps((mode, "http", target))
        lines.append(
            f"| {mode} | {scheme} | {target} | {rps((mode, scheme, target)):,.0f} "
            f"| {statistics.median(s.p99_ms for s in got):.2f} ms "
            f"| {rps((mode, scheme, target)) / ref:.2f}x "
            f"| {rps((mode, scheme, target)) / clear:.2f}x | {sum(s.errors for s in got)} |")
    if memory:
        lines += ["", f"{args.idle_connections:,} idle TLS keep-alive connections:", "",
                  memory_markdown(memory)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
