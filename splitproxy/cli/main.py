"""Command line: `splitproxy run | check | health | demo | status | promote | abort | retry |
pause | resume`. Exit codes: `splitproxy.cli.exitcodes` (and the README)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Literal

from splitproxy import __version__
from splitproxy.cli import health
from splitproxy.cli.client import TOKEN_ENV, AdminClient, AdminError, admin_url
from splitproxy.cli.exitcodes import ExitCode
from splitproxy.cli.status import WAITABLE, show, wait_for, watch
from splitproxy.config import logsafe
from splitproxy.config.models import ConfigError, describe, load
from splitproxy.config.units import parse_duration
from splitproxy.rollout import Action, Phase

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ACTION_HELP = {
    Action.PROMOTE: "advance past a pause (--full: skip to the end)",
    Action.ABORT: "take the canary out of traffic now",
    Action.RETRY: "restart an aborted rollout at step 0",
    Action.PAUSE: "stop a progressing rollout where it is",
    Action.RESUME: "continue a paused rollout",
}


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return seconds


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parser, and its `status` subparser (for errors about status' arguments)."""
    parser = argparse.ArgumentParser(
        prog="splitproxy", description=__doc__,
        epilog="exit codes: 0 ok, 1 error, 2 usage, 3 refused (409), 4 not found (404), "
               "5 admin API unreachable, 6 timed out, 7 other outcome (--wait-for)")
    parser.add_argument("--version", action="version", version=f"splitproxy {__version__}")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="serve with a config file")
    run.add_argument("-c", "--config", required=True, type=Path, help="the config file")
    run.add_argument("--workers", type=int, default=1, help="data-plane processes (default 1)")
    run.add_argument("--log-format", choices=("text", "json"), default=None,
                     help="text, or json (one object per line); default: the config's "
                          "logging.format, else text")

    check = sub.add_parser("check", help="validate a config file and print its routes (every "
                           "problem as file:line: field: message, all in one run)")
    config_file = check.add_mutually_exclusive_group(required=True)
    config_file.add_argument("file", nargs="?", type=Path, help="the config file")
    config_file.add_argument("-c", "--config", type=Path, help="the config file, as for run")

    health.add_parser(sub)

    demo = sub.add_parser("demo", help="a canary rollout, watched by the guard, in front of "
                                       "two built-in upstreams (proxy on :8080)")
    demo.add_argument("-c", "--config", type=Path, default=None,
                      help="a config to use instead of the built-in one")
    demo.add_argument("--free-ports", action="store_true",
                      help="any free ports instead of 8080, 9901, 9001, 9002 (the banner says)")
    demo.add_argument("--load", type=float, default=50.0,
                      help="background requests per second (default 50; 0: none)")

    def admin_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--admin", default=None, metavar="URL",
                       help="admin API URL (default: from -c's admin.listen, else "
                            "http://127.0.0.1:9901); never reached through a proxy")
        p.add_argument("-c", "--config", type=Path, default=None,
                       help="read the admin address from this config (its admin.listen is "
                            "read even when the rest of the file has errors)")
        p.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV})")

    status = sub.add_parser("status", help="routes, weights, rollout phase and verdicts")
    status.add_argument("route", nargs="?", default=None, metavar="ROUTE",
                        help="only this route (required by --wait-for)")
    admin_args(status)
    mode = status.add_mutually_exclusive_group()
    mode.add_argument("--watch", action="store_true",
                      help="refresh every --interval until Ctrl-C (redrawn on a terminal, "
                           "repeated into a pipe)")
    mode.add_argument("--json", action="store_true",
                      help="print the /status JSON (of ROUTE only, when named)")
    mode.add_argument("--wait-for", choices=[str(p) for p in WAITABLE], default=None,
                      metavar="PHASE",
                      help="poll until ROUTE's rollout is promoted, aborted or paused; exit 0 "
                           "then, 7 if it ends in another final phase, 6 at --timeout")
    status.add_argument("--revision", default=None, metavar="REV",
                        help="with --wait-for: only the rollout of this rollout.revision "
                             "counts (wait for the proxy to load it first)")
    status.add_argument("--timeout", type=_duration, default=None, metavar="DURATION",
                        help="with --wait-for: give up after this long (10m, 90s, 1h; "
                             "default: no limit)")
    status.add_argument("--interval", type=_duration, default=2.0, metavar="DURATION",
                        help="seconds between polls for --watch and --wait-for (default 2s)")

    for action in Action:
        p = sub.add_parser(str(action), help=ACTION_HELP[action])
        p.add_argument("route", metavar="ROUTE", help="the route's name")
        admin_args(p)
        if action == Action.PROMOTE:
            p.add_argument("--full", action="store_true",
                           help="skip every remaining step: promoted at once")
        if action == Action.ABORT:
            p.add_argument("--reason", default=None,
                           help="kept with the abort and shown in /status (printable text, at "
                                "most 500 characters)")
    return parser, status


def _status(args: argparse.Namespace, client: AdminClient) -> int:
    if args.wait_for is not None:
        try:
            return wait_for(client, args.route, Phase(args.wait_for), args.timeout,
                            args.interval, sys.stdout, sys.stderr, revision=args.revision)
        except KeyboardInterrupt:
            return ExitCode.INTERRUPTED
    if args.watch:
        try:
            return watch(client, args.route, args.interval, sys.stdout)
        except KeyboardInterrupt:
            return ExitCode.OK  # the usual way to end watching
    return show(client, args.route, args.json, sys.stdout)


def _admin_command(args: argparse.Namespace) -> int:
    try:
        url, notes = admin_url(args.admin, args.config)
    except ConfigError as exc:
        sys.stderr.write("\n".join(exc.errors) + "\n")
        sys.stderr.write(f"error: no admin address in {args.config}: pass --admin URL\n")
        return ExitCode.ERROR
    for note in notes:
        sys.stderr.write(note + "\n")
    timeout = 5.0 if args.command != "status" or args.timeout is None else min(5.0, args.timeout)
    client = AdminClient(url, args.token, timeout=timeout)
    try:
        if args.command == "status":
            return _status(args, client)
        action = Action(args.command)
        result = client.act(args.route, action, full=getattr(args, "full", False),
                            reason=getattr(args, "reason", None))
    except AdminError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.code
    ro = result.rollout
    sys.stdout.write(f"{args.route}: {action} ok: phase {ro.phase}, "
                     f"step {ro.step}/{ro.steps}\n")
    return ExitCode.OK


def _check(path: Path) -> int:
    try:
        config = load(path)
    except ConfigError as exc:
        for line in exc.errors:
            sys.stderr.write(line + "\n")
        return ExitCode.ERROR
    sys.stdout.write(describe(config) + "\n")
    from splitproxy.control.checkstate import promoted_endpoint_warnings

    for line in asyncio.run(promoted_endpoint_warnings(config, path)):
        sys.stdout.write(line + "\n")
    return ExitCode.OK


def _run(path: Path, workers: int, log_format: Literal["text", "json"] | None) -> int:
    if workers < 1:
        sys.stderr.write("--workers must be at least 1\n")
        return ExitCode.USAGE
    from splitproxy.control.service import ListenError, run_loop, serve

    try:
        return run_loop(serve(path, workers, log_format))
    except ConfigError as exc:
        for line in exc.errors:
            sys.stderr.write(line + "\n")
        return ExitCode.ERROR
    except ListenError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return ExitCode.ERROR


def main(argv: list[str] | None = None) -> int:
    parser, status = _parser()
    args = parser.parse_args(argv)  # a usage error exits 2 here, with one line
    if args.command == "status" and args.wait_for is not None and args.route is None:
        status.error("--wait-for needs a ROUTE")
    for flag in ("timeout", "revision"):
        if args.command == "status" and getattr(args, flag) is not None \
                and args.wait_for is None:
            status.error(f"--{flag} goes with --wait-for")
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logsafe.install()  # no client-supplied string can forge a log line
    if args.command == "check":
        return _check(args.config or args.file)
    if args.command == "health":
        return health.main(args)
    if args.command == "run":
        return _run(args.config, args.workers, args.log_format)
    if args.command == "demo":
        from splitproxy.cli.demo import main as demo_main

        return demo_main(str(args.config) if args.config else None,
                         free_ports=args.free_ports, load_rate=args.load)
    return _admin_command(args)
