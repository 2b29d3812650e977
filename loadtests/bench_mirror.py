"""Mirror benchmark: what shadow traffic costs, splitproxy's `mirror` against nginx's `mirror`
directive, in the same run; ratios to nginx.

A benchmark, not a test. It starts, on 127.0.0.1 and free ports, two of `bench.py`'s nginx
upstreams (the primary, and the shadow the copies go to), then for each mirrored share in
``--percents`` (10 and 100) a splitproxy (one worker, `mirror: {to: canary, percent: N}`, the
canary at weight 0 on the shadow upstream) and an nginx (one worker, `mirror` to an internal
location that proxies to the shadow upstream; below 100%, `split_clients` picks the requests and
the others' mirror subrequests end with a 204), plus both proxies without a mirror. wrk runs
against each, interleaved over ``--rounds`` (the order rotates), and the table gives the median
req/s, p50 and p99, each mirrored proxy against nginx mirroring the same share, and against
itself without a mirror (what the copies cost it). splitproxy's copies are counted from its
/metrics (`splitproxy_shadow_requests_total` by result), so a copy it dropped shows.

    python loadtests/bench_mirror.py [--duration 5] [--rounds 2] [--connections 1 64]
                                     [--percents 10 100] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

try:
    from loadtests import bench
except ImportError:  # run as `python loadtests/bench_mirror.py`
    import bench  # type: ignore[import-not-found,no-redef]

SPLIT, NGINX = "splitproxy", bench.NGINX_PROXY


def target(proxy: str, percent: float | None) -> str:
    return proxy if percent is None else f"{proxy}-mirror-{percent:g}"


def shadow_counts(config: Path) -> dict[str, int]:
    """A splitproxy's copies by result, from the /metrics of the admin address in `config`."""
    admin = next(line.split("listen:", 1)[1].strip(" }\n") for line in
                 config.read_text().splitlines() if line.startswith("admin:"))
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5.0) as resp:
        text = resp.read().decode()
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("splitproxy_shadow_requests_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = out.get(result, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def rows_of(samples: list[bench.Sample], connections: list[int],
            percents: list[float]) -> list[dict[str, Any]]:
    rows = []
    for conns in connections:
        def med(name: str, c: int = conns) -> dict[str, Any]:
            return bench.median_of([s for s in samples
                                    if s.target == name and s.connections == c])
        for percent in (None, *percents):
            ref = med(target(NGINX, percent))
            for proxy in (SPLIT, NGINX):
                m = med(target(proxy, percent))
                own = med(proxy)
                rows.append({
                    "target": target(proxy, percent), "connections": conns, **m,
                    "rps_vs_nginx": m["rps"] / ref["rps"] if ref["rps"] else None,
                    "p99_vs_nginx": m["p99_ms"] / ref["p99_ms"] if ref["p99_ms"] else None,
                    "rps_vs_unmirrored": m["rps"] / own["rps"] if own["rps"] else None,
                })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    lines = ["| target | conns | req/s | p50 | p99 | req/s vs nginx (same mirror) "
             "| p99 vs nginx | req/s vs own no-mirror | errors |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['connections']} | {r['rps']:,.0f} "
                     f"| {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms "
                     f"| {ratio(r['rps_vs_nginx'])} | {ratio(r['p99_vs_nginx'])} "
                     f"| {ratio(r['rps_vs_unmirrored'])} | {r['errors']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=bench.wrk_seconds, default=5, help="seconds per wrk run (5)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per target (2)")
    p.add_argument("--connections", type=int, nargs="+", default=[1, 64],
                   help="wrk -c values (1 64)")
    p.add_argument("--percents", type=float, nargs="+", default=[10.0, 100.0],
                   help="mirrored shares (10 100)")
    p.add_argument("--threads", type=int, default=2, help="wrk -t (2)")
    p.add_argument("--warmup", type=bench.wrk_seconds, default=1,
                   help="seconds of warm-up per target (1; 0: none)")
    p.add_argument("--json", metavar="FILE", help="also write every sample and the medians")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1 or args.threads < 1 or args.warmup < 0 \
            or any(c < 1 for c in args.connections) \
            or any(not 0 < x <= 100 for x in args.percents):
        p.error("--duration, --rounds, --threads, --connections must be positive, "
                "--warmup >= 0 (0: none), --percents in (0, 100]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = bench.prepare_run()
    if tools is None:
        return 2
    wrk, nginx = tools
    targets = [target(p, x) for x in (None, *args.percents) for p in (SPLIT, NGINX)]
    runs = args.rounds * len(args.connections) * len(targets)
    sys.stderr.write(f"bench_mirror: {runs} wrk runs of {args.duration:g}s, about "
                     f"{runs * args.duration + len(targets) * args.warmup:.0f}s\n")
    samples: list[bench.Sample] = []
    copies: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="splitproxy-bench-mirror-") as tmpdir:
        tmp = Path(tmpdir)
        children = bench.Children(tmp)
        try:
            upstream = bench.start_nginx_upstream(children, nginx, tmp)
            shadow = bench.start_nginx_upstream(children, nginx, tmp, "shadow")
            ports: dict[str, int] = {}
            for percent in (None, *args.percents):
                mirror = None if percent is None else bench.Mirroring(shadow, percent)
                ports[target(SPLIT, percent)] = bench.start_splitproxy(
                    children, tmp, upstream, target(SPLIT, percent), mirror=mirror)
                ports[target(NGINX, percent)] = bench.start_nginx_proxy(
                    children, nginx, tmp, upstream, name=target(NGINX, percent),
                    mirror=mirror)
            bench.warm_up(wrk, ports, targets, args.threads, args.connections[0], args.warmup,
                          "bench_mirror")
            for conns in args.connections:
                for rnd in range(args.rounds):
                    k = rnd % len(targets)
                    for name in targets[k:] + targets[:k]:
                        sample = bench.sample_wrk(wrk, ports[name], name, args.threads, conns,
                                                  rnd + 1, args.duration)
                        samples.append(sample)
                        sys.stderr.write(f"bench_mirror: c={conns} round {rnd + 1} {name}: "
                                         f"{sample.rps:,.0f} req/s, p99 "
                                         f"{sample.p99_ms:.2f} ms\n")
            for percent in args.percents:
                name = target(SPLIT, percent)
                copies[name] = shadow_counts(tmp / f"{name}-config" / "config.yaml")
        except RuntimeError as exc:
            sys.stderr.write(f"bench_mirror: {exc}\n")
            return 1
        finally:
            children.stop_all()

    rows = rows_of(samples, args.connections, args.percents)
    served = {t: sum(s.requests for s in samples if s.target == t) for t in copies}
    sys.stdout.write(
        f"mirror benchmark: wrk -t{args.threads} -d{args.duration:g}s --latency, median of "
        f"{args.rounds} interleaved round(s); {os.cpu_count()} CPUs\n\n{markdown(rows)}\n\n"
        + "\n".join(f"{t}: copies {c} for {served[t]:,} requests measured (warm-up "
                    "included in the copies)" for t, c in copies.items()) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": vars(args),
                     "median": "statistics.median"},
            "results": rows, "copies": copies,
            "samples": [dataclasses.asdict(s) for s in samples]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
