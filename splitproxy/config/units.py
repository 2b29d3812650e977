"""The value types every config model shares: durations, sizes, names, addresses, and the
frozen base model. Each parses once, at load; nothing below `load()` sees the raw text."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
)

from splitproxy.config.address import EndpointUrl, HostPort
from splitproxy.config.paths import normalise_prefix

_NUMBER = r"(-?(?:\d+(?:\.\d*)?|\.\d+))"
# One part of a duration: a number and its unit (`1h`, `30m`, `1.5s`, `500ms`). `ms` is tried
# before `m`, so `5ms` is never 5 minutes and an `s`.
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|us|h|m|s)?", re.IGNORECASE)
# Largest first: a duration's parts must come in this order, each unit at most once.
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
_DURATION_HELP = "expected a duration like 500ms, 2s or 1m"
_SIZE = re.compile(_NUMBER + r"\s*([a-z]*)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1}
for _exp, _p in enumerate("kmgt", start=1):
    _SIZE_UNITS.update({_p: 1000**_exp, _p + "b": 1000**_exp})  # SI, as disks and `10k`
    _SIZE_UNITS.update({_p + "i": 1024**_exp, _p + "ib": 1024**_exp})  # IEC


def _number(value: object) -> float | None:
    # bool is an int subclass; `true` as a duration is a typo, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _duration_text(text: str) -> float | None:
    """`90`, `1m30s`, `1h30m`, `2m5s500ms` -> seconds; None when it is no duration at all.

    A bare number is seconds, alone only (`1m30` is refused: 30 what?). Units go largest
    first, each once: `1s1m` and `1m1m` are refused rather than summed (Go's
    time.ParseDuration sums them) because the likelier story is a typo.
    """
    negative = text.startswith("-")
    body = text[1:] if negative else text
    parts: list[tuple[float, str | None]] = []
    at = 0
    while at < len(body):
        m = _DURATION_PART.match(body, at)
        if m is None:
            return None
        parts.append((float(m[1]), m[2].lower() if m[2] else None))
        at = m.end()
    if not parts or (len(parts) > 1 and any(unit is None for _, unit in parts)):
        return None
    order = list(_DURATION_UNITS)
    ranks = [order.index(unit or "s") for _, unit in parts]
    if any(a >= b for a, b in zip(ranks, ranks[1:], strict=False)):
        raise ValueError(f"{text!r}: write the units largest first, each once (h, m, s, ms, us: "
                         "1h30m, 2m5s500ms)")
    seconds = sum(n * _DURATION_UNITS[unit or "s"] for n, unit in parts)
    return -seconds if negative else seconds


def parse_duration(value: object) -> float:
    """`500ms`, `2s`, `1m30s`, `1h` or a bare number of seconds -> seconds as a float."""
    seconds = _number(value)
    if seconds is None and isinstance(value, str):
        seconds = _duration_text(value.strip())
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"{_DURATION_HELP}, got {value!r}")
    if seconds < 0:
        raise ValueError(f"duration must be >= 0, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """`512`, `64KiB`, `10MB`, `1GiB` -> bytes."""
    size: Fraction | None = None
    if (number := _number(value)) is not None:
        size = Fraction(number)
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        if (unit := _SIZE_UNITS.get(m[2].lower())) is not None:
            size = Fraction(m[1]) * unit
    if size is None:
        raise ValueError(f"expected a size like 512, 64KiB or 10MB, got {value!r}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {value!r}")
    if size.denominator != 1:
        raise ValueError(f"size must be a whole number of bytes, got {value!r}")
    return int(size)


_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token; cookie names too


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"invalid name {value!r}: use only letters, digits, '_', '.' and '-'")
    return value


def _token(value: str | None) -> str | None:
    if value is not None and not _TOKEN.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid HTTP header or cookie name")
    return value


def _host(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"expected a host name without scheme, port or path, got {value!r}")
    return value


def _http_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number in 0..65535
        ok = False
    if not ok:
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    return value


def weight(value: object) -> float:
    """A weight: a number >= 0 in steps of 0.01 (`true` and strings are not weights). A whole
    number stays an `int`, so configs, stored states and identities written with integer
    weights read, dump and hash exactly as before fractions were accepted."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be >= 0")
    if isinstance(value, int):
        return value
    hundredths = round(value * 100)
    if abs(value * 100 - hundredths) > 1e-6:
        raise ValueError(f"weights go down to 0.01, got {value!r}")
    return hundredths // 100 if hundredths % 100 == 0 else hundredths / 100


def _path_prefix(value: str) -> str:
    # Requests are matched on their normalised path (see `paths`); the prefix is normalised
    # the same way once, here, so `/api/./v1` and `/api//v1` mean what they say.
    if not value.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    try:
        return normalise_prefix(value)
    except ValueError as exc:
        raise ValueError(f"{exc}: {value!r}") from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Timeout = Annotated[Duration, Field(gt=0)]
Name = Annotated[str, AfterValidator(_name)]
Token = Annotated[str | None, AfterValidator(_token)]
Listen = HostPort  # parsed once: .host, .port
Weight = Annotated[float, PlainValidator(weight)]  # see `weight`

Millis = Annotated[float, Field(gt=0)]
Positive = Annotated[int, Strict(), Field(ge=1)]
HostName = Annotated[str, AfterValidator(_host)]
PathPrefix = Annotated[str, AfterValidator(_path_prefix)]
Endpoint = EndpointUrl  # parsed once: .address
HttpUrl = Annotated[str, AfterValidator(_http_url)]
WebhookUrl = HttpUrl
TOKEN = _TOKEN


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

