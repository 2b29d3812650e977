"""A rollout step's header or cookie route (`set_header_route:`), Argo Rollouts'
`setHeaderRoute` and NGINX's `canary-by-header`, `-pattern` and `canary-by-cookie`: from
that step on, requests matching it go to the canary whatever its weight.

Python's `re` backtracks (there is no RE2 in the standard library), so a pattern an operator
writes runs on every request of the route and must not be able to take seconds on a hostile
header. What is refused here, with the reason:
- a quantified group (`(a+)+`, `(a|ab)*`, `(x){2,}`): nested quantifiers and quantified
  alternations are where backtracking becomes exponential;
- backreferences (`\\1`, `(?P=name)`): they make matching NP-hard;
- more than two quantifiers (`*`, `+`, `{...}`): each unbounded one multiplies the work by
  the value's length, so two bound it by its square;
- a pattern longer than `MAX_PATTERN` characters.
The data plane then only ever matches (`fullmatch`) the first `MAX_VALUE` bytes of a header or
cookie value: a longer value never matches a `regex` route. Two quantifiers over at most 256
bytes are at most 65,536 steps, microseconds in the C engine.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from splitproxy.config.units import Frozen, Token

MAX_PATTERN = 256  # characters of a `regex` value
MAX_VALUE = 256  # bytes of a header or cookie value a `regex` route looks at
MAX_QUANTIFIERS = 2
_BACKREF = re.compile(r"\\[1-9]|\(\?P=")


class MatchKind(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"  # `fullmatch`, on a value of at most MAX_VALUE bytes


def regex_problem(pattern: str) -> str | None:
    """Why `pattern` is refused as a header route's regex, or None when it is accepted."""
    if len(pattern) > MAX_PATTERN:
        return f"a regex is at most {MAX_PATTERN} characters"
    if _BACKREF.search(pattern):
        return "backreferences are refused (they can take exponential time)"
    quantifiers = 0
    i, n = 0, len(pattern)
    class_from = -1  # inside a character class: where its members start; else -1
    after_group = False  # the last thing read closed a group
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            after_group = False
            continue
        if class_from >= 0:
            if c == "]" and i > class_from:  # a `]` first in a class is a member
                class_from = -1
        elif c == "[":
            class_from = i + 2 if pattern[i + 1:i + 2] == "^" else i + 1
        elif c in "*+{":
            quantifiers += 1
            if after_group:
                return ("a quantified group is refused (nested quantifiers and quantified "
                        "alternations backtrack exponentially): quantify single characters "
                        "or classes")
        after_group = c == ")" and class_from < 0
        i += 1
    if quantifiers > MAX_QUANTIFIERS:
        return (f"at most {MAX_QUANTIFIERS} quantifiers (*, +, {{...}}) are accepted: each "
                "multiplies the work on a long value")
    try:
        re.compile(pattern.encode("latin-1"))
    except UnicodeEncodeError:
        return "a regex must be latin-1 (header values are bytes)"
    except re.error as exc:
        return f"not a regular expression: {exc}"
    return None


def _value(value: str) -> str:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("must be latin-1 (header values are bytes)") from None
    return value


class HeaderRoute(Frozen):
    """`{header: X-Canary, match: exact, value: "yes"}` or `{cookie: canary, value: always}`."""

    header: Token = None
    cookie: Token = None
    match: MatchKind = MatchKind.EXACT
    value: Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_value)]

    @model_validator(mode="after")
    def _one_source(self) -> HeaderRoute:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("a header route names either `header` or `cookie`")
        if self.match == MatchKind.REGEX and (problem := regex_problem(self.value)):
            raise ValueError(f"value: {problem}")
        return self

    def describe(self) -> str:
        what = f"header {self.header}" if self.header is not None else f"cookie {self.cookie}"
        return f"{what} {self.match} {self.value!r}"
