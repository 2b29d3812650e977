"""Header and cookie routes of the current rollout step (Argo's `setHeaderRoute`, NGINX's
`canary-by-header`, `-pattern`, `canary-by-cookie`): does a request match one of them?

Pure, like `choose`: the rules are compiled once per routing-table build (a regex is compiled
there, never per request); a request is looked at through the lower-case header dict the
parser fills. `config.headerroute` says what keeps a regex from backtracking for long.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from splitproxy.config.headerroute import MAX_VALUE, HeaderRoute, MatchKind


@dataclass(frozen=True, slots=True)
class Rule:
    """One header route, ready for the hot path."""

    header: bytes | None  # lower-case header name; None: a cookie rule
    cookie: bytes | None
    kind: MatchKind
    value: bytes
    pattern: re.Pattern[bytes] | None  # for MatchKind.REGEX

    def accepts(self, value: bytes) -> bool:
        if self.kind == MatchKind.EXACT:
            return value == self.value
        if self.kind == MatchKind.PREFIX:
            return value.startswith(self.value)
        assert self.pattern is not None
        # A longer value never matches: it bounds what a pattern may cost (see headerroute).
        return len(value) <= MAX_VALUE and self.pattern.fullmatch(value) is not None


def compile_rules(routes: tuple[HeaderRoute, ...]) -> tuple[Rule, ...]:
    out = []
    for r in routes:
        value = r.value.encode("latin-1")
        out.append(Rule(
            header=r.header.lower().encode("latin-1") if r.header is not None else None,
            cookie=r.cookie.encode("latin-1") if r.cookie is not None else None,
            kind=r.match,
            value=value,
            pattern=re.compile(value) if r.match == MatchKind.REGEX else None,
        ))
    return tuple(out)


def cookie_in(header: bytes, name: bytes) -> bytes | None:
    """The value of cookie `name` in a `Cookie` request header, if present."""
    for part in header.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            return value.strip(b'"')
    return None


def steered(rules: tuple[Rule, ...], seen: dict[bytes, bytes]) -> bool:
    """True when the request (its headers, lower-case names) matches any of `rules`."""
    for rule in rules:
        if rule.header is not None:
            value = seen.get(rule.header)
        else:
            raw = seen.get(b"cookie")
            assert rule.cookie is not None
            value = cookie_in(raw, rule.cookie) if raw is not None else None
        if value is not None and rule.accepts(value.strip()):
            return True
    return False
