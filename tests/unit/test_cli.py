"""The CLI's pure parts: how a wait ends, which exit code an answer maps to, the parser."""

from __future__ import annotations

import argparse

import pytest

from splitproxy.cli import main as cli
from splitproxy.cli.exitcodes import ExitCode, for_http_status
from splitproxy.cli.status import outcome
from splitproxy.rollout import Action, Phase

OK, OTHER = ExitCode.OK, ExitCode.OTHER_OUTCOME


@pytest.mark.parametrize(("wanted", "phase", "code"), [
    (Phase.PROMOTED, Phase.PROMOTED, OK),
    (Phase.PROMOTED, Phase.PROGRESSING, None),
    (Phase.PROMOTED, Phase.PAUSED, None),  # a pause waits for an operator: keep waiting
    (Phase.PROMOTED, Phase.IDLE, None),  # a reload may bring the steps
    (Phase.PROMOTED, Phase.ABORTED, OTHER),
    (Phase.ABORTED, Phase.ABORTED, OK),
    (Phase.ABORTED, Phase.PROMOTED, OTHER),  # promoted is final: it will not abort any more
    (Phase.ABORTED, Phase.PAUSED, None),
    (Phase.PAUSED, Phase.PAUSED, OK),
    (Phase.PAUSED, Phase.PROGRESSING, None),
    (Phase.PAUSED, Phase.ABORTED, OTHER),
    (Phase.PAUSED, Phase.PROMOTED, OTHER),
])
def test_how_a_wait_ends(wanted: Phase, phase: Phase, code: ExitCode | None) -> None:
    assert outcome(phase, wanted) == code


@pytest.mark.parametrize(("status", "code"), [
    (400, ExitCode.USAGE), (401, ExitCode.ERROR), (404, ExitCode.NOT_FOUND),
    (409, ExitCode.REFUSED), (500, ExitCode.ERROR), (503, ExitCode.ERROR),
])
def test_http_status_to_exit_code(status: int, code: ExitCode) -> None:
    assert for_http_status(status) == code


def test_the_exit_codes_are_distinct_and_stable() -> None:
    # Scripts compare numbers: these are documented in the README and must not move.
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0, "ERROR": 1, "USAGE": 2, "REFUSED": 3, "NOT_FOUND": 4, "UNREACHABLE": 5,
        "TIMED_OUT": 6, "OTHER_OUTCOME": 7, "INTERRUPTED": 130}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_flag_and_argument_has_help() -> None:
    parser, _ = cli._parser()
    commands = _subparsers(parser)
    assert set(commands) >= {str(a) for a in Action}  # one subcommand per admin action
    missing = [f"{name} {a.dest}"
               for name, p in [("splitproxy", parser), *commands.items()]
               for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert missing == []


@pytest.mark.parametrize("argv", [
    ["--log-level", "foo", "status"],
    ["status", "--wait-for", "promoted"],  # needs a route
    ["status", "shop", "--wait-for", "done"],
    ["status", "shop", "--wait-for", "promoted", "--timeout", "soon"],
    ["status", "shop", "--wait-for", "promoted", "--timeout", "0"],
    ["status", "--timeout", "10m"],  # without --wait-for
    ["status", "shop", "--revision", "v2"],  # without --wait-for
    ["status", "--watch", "--json"],
    ["promote"],
])
def test_usage_errors_exit_2_with_one_line_and_no_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if "error:" in x]
    assert line.startswith("splitproxy"), err
    assert "Traceback" not in err


def test_log_level_is_case_insensitive() -> None:
    parser, _ = cli._parser()
    assert parser.parse_args(["--log-level", "debug", "status"]).log_level == "DEBUG"
