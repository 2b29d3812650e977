"""Command line: `splitproxy run | check | demo`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from splitproxy import __version__
from splitproxy.config import ConfigError, describe, load


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

    demo = sub.add_parser("demo", help="two built-in upstreams behind the proxy on :8080")
    demo.add_argument("-c", "--config", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "check":
        try:
            config = load(args.config)
        except ConfigError as exc:
            for line in exc.errors:
                sys.stderr.write(line + "\n")
            return 1
        sys.stdout.write(describe(config) + "\n")
        return 0
    if args.command == "run":
        if args.workers != 1:
            sys.stderr.write("--workers > 1 is not available yet: run one process per core "
                             "behind a load balancer for now\n")
            return 2
        from splitproxy.service import run_loop, serve

        try:
            return run_loop(serve(args.config))
        except ConfigError as exc:
            for line in exc.errors:
                sys.stderr.write(line + "\n")
            return 1
    if args.command == "demo":
        from splitproxy.demo import main as demo_main

        return demo_main(str(args.config) if args.config else None)
    return 2
