"""Rules that tie one config field to another, in one place for two callers.

The models' validators apply them to validated values. But pydantic runs a model's validator
only once every field of that model validated, so one bad endpoint used to hide an unknown
weight key, and any bad route a duplicate route name, until it was fixed: errors came in
stages. `recheck` applies the same rules to the raw data of a file that failed validation,
using each piece that is valid on its own, so `splitproxy check` reports every error of a file
in one run (the loader drops what both report).

Each rule takes facts, not models; a fact that did not validate is `UNKNOWN` (its own error is
already reported) and the rules that need it stay silent. Problems are located relative to
the model the rule belongs to, as `yamlload.Located` expects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from pydantic import TypeAdapter, ValidationError

from splitproxy.config.units import Listen, Name, Weight
from splitproxy.config.yamlload import Problem


class Unknown(Enum):
    """A value that did not validate."""

    UNKNOWN = "unknown"


UNKNOWN: Final = Unknown.UNKNOWN


@dataclass(frozen=True, slots=True)
class RolloutFacts:
    canary: str | None | Unknown
    shaped: bool  # has steps, a window or a canary: what blue-green refuses


@dataclass(frozen=True, slots=True)
class RouteFacts:
    versions: tuple[str, ...] | Unknown
    strategy: str | Unknown = "canary"
    active: str | None | Unknown = None
    baseline: str | None | Unknown = None  # analysis.baseline
    rollout: RolloutFacts | None = None


# ------------------------------------------------------------------------------------- rules


def weight_problems(versions: tuple[str, ...] | Unknown, strategy: str | Unknown,
                    weights: Mapping[str, float | Unknown] | None) -> list[Problem]:
    """A route's `weights`: required for a canary, every key a version, total > 0."""
    if weights is None:
        return [((), "required")] if strategy == "canary" else []
    if isinstance(versions, Unknown):
        return []
    known = ", ".join(versions)
    problems: list[Problem] = [((key,), f"unknown version {key!r} (versions: {known})")
                               for key in weights if key not in versions]
    values = [w for w in weights.values() if not isinstance(w, Unknown)]
    if not problems and len(values) == len(weights) and sum(values) <= 0:
        problems.append(((), "total weight must be > 0"))
    return problems


def _baseline(f: RouteFacts) -> str | Unknown:
    """As `Route.baseline`: analysis.baseline, else blue-green's active, else the first."""
    if f.baseline is not None:
        return f.baseline
    if f.strategy == "blue-green" and f.active is not None:
        return f.active
    if isinstance(f.strategy, Unknown) or isinstance(f.versions, Unknown) or not f.versions:
        return UNKNOWN
    return f.versions[0]


def route_problems(f: RouteFacts) -> list[Problem]:
    """A route's names of versions (active, baseline, canary) and its strategy's fields."""
    problems: list[Problem] = []
    known = None if isinstance(f.versions, Unknown) else f.versions
    names = ", ".join(known or ())

    def stranger(name: str | None | Unknown) -> bool:
        return isinstance(name, str) and known is not None and name not in known

    if f.strategy == "blue-green":
        if f.active is None:
            problems.append((("active",), "required for strategy blue-green"))
        elif stranger(f.active):
            problems.append((("active",), f"unknown version {f.active!r} ({names})"))
        if f.rollout is not None and f.rollout.shaped:
            problems.append((("rollout",), "blue-green switches by `active`, not steps "
                             "(only `revision` and `webhooks` apply)"))
    elif f.strategy == "canary" and isinstance(f.active, str):
        problems.append((("active",), "only for strategy blue-green"))
    if stranger(f.baseline):
        problems.append((("analysis", "baseline"), f"unknown version {f.baseline!r} ({names})"))
    if f.rollout is not None and isinstance(canary := f.rollout.canary, str):
        if stranger(canary):
            problems.append((("rollout", "canary"), f"unknown version {canary!r} ({names})"))
        elif canary == _baseline(f):
            problems.append((("rollout", "canary"), "must not be the baseline version"))
    if f.rollout is not None and known is not None and len(known) < 2:
        problems.append((("rollout",), "needs at least two versions"))
    return problems


def route_name_problems(names: Sequence[str | Unknown]) -> list[Problem]:
    """Route names are unique (they label every metric). Relative to `routes`."""
    first: dict[str, int] = {}
    problems: list[Problem] = []
    for i, name in enumerate(names):
        if not isinstance(name, Unknown) and (j := first.setdefault(name, i)) != i:
            problems.append(((i, "name"), f"duplicate route name (also routes[{j}])"))
    return problems


def address_problems(listen: object, admin_listen: object) -> list[Problem]:
    """The admin API never shares the proxy's address. Relative to the config."""
    if isinstance(listen, Unknown) or isinstance(admin_listen, Unknown):
        return []
    # Port 0 asks the OS for a free port, so the two can never collide.
    if listen == admin_listen and not str(listen).endswith(":0"):
        return [(("admin", "listen"), f"same address as listen ({listen})")]
    return []


def analysis_problems(error_rate: bool, compare: bool, latency: bool,
                      metrics: bool = False) -> list[Problem]:
    """An `analysis` section judges at least one thing."""
    if error_rate or compare or latency or metrics:
        return []
    return [((), "analysis judges nothing: set max_error_rate, a max_pNN_ms, "
             "compare_to_baseline or metrics, or remove analysis")]


def step_problems(set_weight: bool, pause: bool, header_route: bool = False,
                  mirror: bool = False) -> list[Problem]:
    """A rollout step does one thing."""
    if set_weight + pause + header_route + mirror != 1:
        return [((), "a step is one of `set_weight: N`, `pause: ...`, "
                 "`set_header_route: {...}` or `set_mirror: {...}`")]
    return []


# ------------------------------------------------------------------- the raw data, rechecked

_NAME: TypeAdapter[str] = TypeAdapter(Name)
_WEIGHT: TypeAdapter[float] = TypeAdapter(Weight)
_LISTEN: TypeAdapter[object] = TypeAdapter(Listen)
_LATENCY_KEY = re.compile(r"max_p\d+_ms")  # the limits of `guard.LATENCY_LIMITS`


def _name(raw: Mapping[object, object], key: str) -> str | None | Unknown:
    if raw.get(key) is None:  # absent or null: the field's default, None
        return None
    try:
        return _NAME.validate_python(raw[key])
    except ValidationError:
        return UNKNOWN


def _weight(value: object) -> float | Unknown:
    try:
        return _WEIGHT.validate_python(value)
    except ValidationError:
        return UNKNOWN


def _listen(raw: Mapping[object, object], default: object) -> object:
    if "listen" not in raw:
        return default
    try:
        return _LISTEN.validate_python(raw["listen"])
    except ValidationError:
        return UNKNOWN


def _under(prefix: tuple[str | int, ...], problems: list[Problem]) -> list[Problem]:
    return [((*prefix, *where), message) for where, message in problems]


def _versions(raw: object) -> tuple[str, ...] | Unknown:
    """The version names, when every one is valid; their endpoints do not matter here."""
    if not isinstance(raw, Mapping) or not raw:
        return UNKNOWN
    names = []
    for key in raw:
        try:
            names.append(_NAME.validate_python(key))
        except ValidationError:
            return UNKNOWN
    return tuple(names)


def _route(raw: Mapping[object, object]) -> list[Problem]:
    versions = _versions(raw.get("versions"))
    given = raw.get("strategy", "canary")
    strategy = given if isinstance(given, str) and given in ("canary", "blue-green") else UNKNOWN
    problems: list[Problem] = []

    weights = raw.get("weights")
    if weights is None or isinstance(weights, Mapping):
        typed = None if weights is None else {
            k: _weight(v) for k, v in weights.items() if isinstance(k, str)}
        problems += _under(("weights",), weight_problems(versions, strategy, typed))

    analysis = raw.get("analysis")
    baseline: str | None | Unknown = None
    if isinstance(analysis, Mapping):
        baseline = _name(analysis, "baseline")
        problems += _under(("analysis",), analysis_problems(
            error_rate="max_error_rate" not in analysis or analysis["max_error_rate"] is not None,
            compare=analysis.get("compare_to_baseline") is not None,
            latency=any(v is not None for k, v in analysis.items()
                        if isinstance(k, str) and _LATENCY_KEY.fullmatch(k)),
            metrics=bool(analysis.get("metrics"))))

    rollout = raw.get("rollout")
    facts = None
    if isinstance(rollout, Mapping):
        facts = RolloutFacts(_name(rollout, "canary"), bool(rollout.get("steps"))
                             or rollout.get("window") is not None
                             or rollout.get("canary") is not None)
        steps = rollout.get("steps")
        for j, step in enumerate(steps if isinstance(steps, list) else ()):
            if isinstance(step, Mapping):
                problems += _under(("rollout", "steps", j), step_problems(
                    step.get("set_weight") is not None, step.get("pause") is not None,
                    step.get("set_header_route") is not None,
                    step.get("set_mirror") is not None))

    problems += route_problems(RouteFacts(versions, strategy, _name(raw, "active"), baseline,
                                          facts))
    return problems


def recheck(data: Mapping[object, object], default_listen: object,
            default_admin_listen: object) -> list[Problem]:
    """Every cross-field problem of a config's raw data, judged on the pieces that are valid
    on their own. Some are also pydantic's errors: the caller drops repeats."""
    problems: list[Problem] = []
    routes = data.get("routes")
    if isinstance(routes, list):
        names: list[str | Unknown] = []
        for i, raw in enumerate(routes):
            if not isinstance(raw, Mapping):
                names.append(UNKNOWN)
                continue
            names.append(_name(raw, "name") or UNKNOWN)
            problems += _under(("routes", i), _route(raw))
        problems += _under(("routes",), route_name_problems(names))
    admin = data.get("admin", {})
    admin_listen = _listen(admin, default_admin_listen) if isinstance(admin, Mapping) \
        else UNKNOWN
    problems += address_problems(_listen(data, default_listen), admin_listen)
    return problems
