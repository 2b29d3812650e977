"""A route's shadow traffic (`mirror`): which version gets a copy of which requests, and how
its answers are compared with the primary's (README: Shadow traffic)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from splitproxy.config.units import Frozen, Name, Positive, Size, Timeout

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Compare(Frozen):
    # Off: only the status class (2xx, 3xx, ...) is compared.
    body: bool = False
    # Response headers left out of the comparison (with body: true). Date, Server, framing
    # and hop-by-hop headers are always left out.
    ignore_headers: tuple[str, ...] = ()
    # Top-level or dotted (`meta.generated_at`) fields removed from a JSON body before it is
    # compared; a body that is not JSON is compared byte for byte.
    ignore_json_fields: tuple[str, ...] = ()

    @field_validator("ignore_headers")
    @classmethod
    def _lower(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n.strip().lower() for n in names)


class Mirror(Frozen):
    to: Name  # a version of this route
    percent: Annotated[float, Field(gt=0, le=100)] = 100.0
    methods: tuple[Method, ...] = ("GET", "HEAD")
    # A request whose body is larger is never mirrored (nor one with a chunked body).
    max_body: Size = 65536
    timeout: Timeout = 2.0  # for the whole copy: connect, send, answer
    max_in_flight: Positive = 64  # copies in progress per route; beyond: dropped
    compare: Compare = Compare()
