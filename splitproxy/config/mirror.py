"""A route's shadow traffic (`mirror`): which version gets a copy of which requests, and how
its answers are compared with the primary's (README: Shadow traffic)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator

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


class _Copying(Frozen):
    """How copies are made and compared: the same for a route's `mirror` and a step's."""

    methods: tuple[Method, ...] = ("GET", "HEAD")
    # A request whose body is larger is never mirrored (nor one with a chunked body).
    max_body: Size = 65536
    timeout: Timeout = 2.0  # for the whole copy: connect, send, answer
    max_in_flight: Positive = 64  # copies in progress per route; beyond: dropped
    compare: Compare = Compare()


class Mirror(_Copying):
    to: Name  # a version of this route
    percent: Annotated[float, Field(gt=0, le=100)] = 100.0


def _shorthand(value: object) -> object:
    # `set_mirror: 10` is `set_mirror: {percent: 10}`; `set_mirror: 0` turns it off.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"percent": value}
    return value


class MirrorStep(_Copying):
    """A rollout step's shadow traffic (Argo's `setMirrorRoute`): from that step on, until a
    later `set_mirror`, the abort or the promotion, `percent` of the route's requests are
    copied to the rollout's canary; 0 turns the copies off."""

    percent: Annotated[float, Field(ge=0, le=100)]

    def mirror(self, canary: str) -> Mirror | None:
        """The route's mirror while this step is in force (None: no copies)."""
        if self.percent == 0:
            return None
        return Mirror(to=canary, **self.model_dump(exclude={"percent"}),
                      percent=self.percent)

    def describe(self) -> str:
        return "off" if self.percent == 0 else f"{self.percent:g}% to the canary"


StepMirror = Annotated[MirrorStep, BeforeValidator(_shorthand)]
