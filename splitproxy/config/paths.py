"""Request-target normalisation: the path a route is chosen for is the path the upstream gets.

Rule (README, "Path normalisation"): percent-escapes of unreserved characters are decoded
(`%77` -> `w`, `%2e` -> `.`), other escapes are kept with upper-case hex (`%2f` -> `%2F`, never a
separator), repeated slashes are merged, and `.`/`..` segments are removed (RFC 3986 5.2.4).
A `..` that climbs above the root, a `%` not followed by two hex digits, or an encoded NUL
(`%00`) is refused with 400, as nginx refuses `/../x` and `%00`. The query is passed as received.

Pure and dependency-free: the config normalises its `path_prefix` with it, the data plane each
request target that needs it.
"""

from __future__ import annotations

import re
from typing import Final


class BadTarget(ValueError):
    """A request target that has no single meaning: answered 400."""

_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE: Final = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_PERCENT: Final = ord("%")
_DOT: Final = ord(".")


def _unescape(match: re.Match[bytes]) -> bytes:
    byte = int(match[1], 16)
    return bytes((byte,)) if byte in _UNRESERVED else b"%" + match[1].upper()


def needs_normalising(target: bytes) -> bool:
    """A cheap test for the common case: nothing to decode, no dot segment, no `//`.
    May say yes for a harmless target (a `%` in the query, `/.well-known`)."""
    # `int in bytes` is one memchr. For a two-byte needle `partition` is the cheapest search
    # found: it takes its one argument as is and, finding nothing, returns the target and two
    # empty singletons, while `find` parses its arguments through a tuple (315 instructions
    # more on the cost gate's small GET, compiled), `needle in target` first tries the needle
    # as an integer and formats a TypeError it then drops (1,800), and a regex search costs
    # 2,400 (callgrind).
    if _PERCENT in target:
        return True
    if _DOT in target and target.partition(b"/.")[1]:
        return True
    return len(target.partition(b"//")[1]) != 0


def normalise_path(path: bytes) -> bytes:
    """The normal form of an origin-form path (no query); raises `BadTarget`."""
    if b"%" in path:
        if _BAD_ESCAPE.search(path):
            raise BadTarget("malformed percent-escape in the request target")
        if b"%00" in path:
            # A NUL cuts the path short in C code behind the upstream (nginx: 400 as well).
            raise BadTarget("an encoded NUL (%00) in the request path")
        path = _ESCAPE.sub(_unescape, path)
    segments = path.split(b"/")[1:]
    out: list[bytes] = []
    for seg in segments:
        if seg == b"..":
            if not out:
                raise BadTarget("request target climbs above the root")
            out.pop()
        elif seg and seg != b".":
            out.append(seg)
    trailing = bool(segments) and segments[-1] in (b"", b".", b"..")
    return b"/" + b"/".join(out) + (b"/" if trailing and out else b"")


def normalise_target(target: bytes) -> bytes:
    """`normalise_path` on the path part of an origin-form target; the query is kept."""
    if not target.startswith(b"/"):
        return target  # `*` (OPTIONS): no path to normalise
    path, sep, query = target.partition(b"?")
    return normalise_path(path) + sep + query


def normalise_prefix(prefix: str) -> str:
    """A configured `path_prefix` in the same normal form, so both sides compare alike."""
    trailing = prefix.endswith("/")
    norm = normalise_path(prefix.encode("latin-1")).decode("latin-1")
    return norm + "/" if trailing and not norm.endswith("/") else norm
