"""Command line: `splitproxy run | check | demo | status | promote | abort | retry | pause |
resume`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from splitproxy import __version__
from splitproxy.cli.client import TOKEN_ENV, AdminClient, AdminError, watch
from splitproxy.config import logsafe
from splitproxy.config.models import ConfigError, describe, load


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"splitproxy {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve with a config file")
    run.add_argument("-c", "--config", required=True, type=Path)
    run.add_argument("--workers", type=int, default=1, help="data-plane processes (default 1)")

    check = sub.add_parser("check", help="validate a config file and print its routes")
    check.add_argument("-c", "--config", required=True, type=Path)

    demo = sub.add_parser("demo", help="a canary rollout, watched by the guard, in front of "
                                       "two built-in upstreams (proxy on :8080)")
    demo.add_argument("-c", "--config", type=Path, default=None)
    demo.add_argument("--free-ports", action="store_true",
                      help="any free ports instead of 8080, 9901, 9001, 9002 (the banner says)")
    demo.add_argument("--load", type=float, default=50.0,
                      help="background requests per second (default 50; 0: none)")

    def admin_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--admin", default=None,
                       help="admin API URL (default: from -c's admin.listen, else "
                            "http://127.0.0.1:9901)")
        p.add_argument("-c", "--config", type=Path, default=None,
                       help="read the admin address from this config")
        p.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV})")

    status = sub.add_parser("status", help="routes, weights, rollout phase and verdicts")
    admin_args(status)
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0)
    status.add_argument("--json", action="store_true", help="print the raw /status JSON")
    for verb, text in (
        ("promote", "advance past a pause (--full: skip to the end)"),
        ("abort", "take the canary out of traffic now"),
        ("retry", "restart an aborted rollout at step 0"),
        ("pause", "stop a progressing rollout where it is"),
        ("resume", "continue a paused rollout"),
    ):
        p = sub.add_parser(verb, help=text)
        p.add_argument("route")
        admin_args(p)
        if verb == "promote":
            p.add_argument("--full", action="store_true")
        if verb == "abort":
            p.add_argument("--reason", default=None)
    return parser


def _admin_client(args: argparse.Namespace) -> AdminClient:
    url = args.admin
    if url is None and args.config is not None:
        host, _, port = load(args.config).admin.listen.rpartition(":")
        host = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host
        url = f"http://{host}:{port}"
    return AdminClient(url or "http://127.0.0.1:9901", args.token)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logsafe.install()  # no client-supplied string can forge a log line
    if args.command == "check":
        try:
            config = load(args.config)
        except ConfigError as exc:
            for line in exc.errors:
                sys.stderr.write(line + "\n")
            return 1
        sys.stdout.write(describe(config) + "\n")
        from splitproxy.control.checkstate import promoted_endpoint_warnings

        for line in asyncio.run(promoted_endpoint_warnings(config, args.config)):
            sys.stdout.write(line + "\n")
        return 0
    if args.command == "run":
        if args.workers < 1:
            sys.stderr.write("--workers must be at least 1\n")
            return 2
        from splitproxy.control.service import run_loop, serve

        try:
            return run_loop(serve(args.config, args.workers))
        except ConfigError as exc:
            for line in exc.errors:
                sys.stderr.write(line + "\n")
            return 1
    if args.command in ("status", "promote", "abort", "retry", "pause", "resume"):
        try:
            client = _admin_client(args)
        except ConfigError as exc:
            sys.stderr.write("\n".join(exc.errors) + "\n")
            return 1
        if args.command == "status":
            if args.json:
                try:
                    sys.stdout.write(json.dumps(client.status(), indent=2) + "\n")
                except AdminError as exc:
                    sys.stderr.write(f"error: {exc}\n")
                    return 1
                return 0
            try:
                return watch(client, args.interval, once=not args.watch)
            except KeyboardInterrupt:
                return 0
        try:
            result = client.act(args.route, args.command, full=getattr(args, "full", False),
                                reason=getattr(args, "reason", None))
        except AdminError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 1
        ro = result["rollout"]
        sys.stdout.write(f"{args.route}: {args.command} ok: phase {ro['phase']}, "
                         f"step {ro['step']}/{ro['steps']}\n")
        return 0
    if args.command == "demo":
        from splitproxy.cli.demo import main as demo_main

        return demo_main(str(args.config) if args.config else None,
                         free_ports=args.free_ports, load_rate=args.load)
    return 2
