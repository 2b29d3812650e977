"""What `GET /status` answers, as models: the admin API builds its answer from them and
`splitproxy status` reads the answer back into them, so both sides agree on one shape.

Every field is typed. One part is open: the check history keeps the keys it came with
(`extra="allow"`), because a stored state may carry lines written by an older version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

from splitproxy.config.guard import Source
from splitproxy.config.mirror import Mirror
from splitproxy.config.models import Backend, Strategy
from splitproxy.rollout import Action, Actor, PauseReason, Phase
from splitproxy.rollout.verdicts import Outcome


class _Model(BaseModel):
    # Unknown keys are ignored when read: a CLI may talk to a newer proxy.
    model_config = ConfigDict(frozen=True)


class _Open(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class LastReload(_Model):
    time: float | None  # wall clock
    result: Literal["success", "error"] | None
    error: str | None


class RestartNeeded(_Model):
    """A setting the file changed since start-up that only a restart applies."""

    field: str
    running: str
    configured: str


class CertificatesRefused(_Model):
    """A TLS listener whose certificate files changed and do not load: its previous
    certificates serve on until a set that loads arrives (then the entry goes)."""

    listener: str  # its address
    error: str  # the file and the reason
    since: float  # wall clock


class ConfigStatus(_Model):
    path: str
    generation: int
    last_reload: LastReload
    reloads: dict[str, int]  # result -> count
    restart_needed: list[RestartNeeded] = []  # the controller's `restart_needed()`
    # Certificate files reloaded after they changed on disk (not config edits): by result,
    # and the listeners refused now. Defaulted: an older proxy's answer has neither.
    certificate_reloads: dict[str, int] = {}
    certificates_refused: list[CertificatesRefused] = []


class AdminStatus(_Model):
    """What the admin API asks of a request (`AdminGuard.describe()`; never the token)."""

    token: Literal["required", "none"]
    token_source: Literal["file", "environment"] | None
    token_file: str | None
    token_error: str | None
    metrics_auth: bool
    allowed_hosts: list[str]  # and every IP literal


class PendingWrite(_Model):
    """A rollout decision whose write to the state store has not landed yet."""

    since: float
    seq: int
    phase: Phase
    attempts: int
    error: str | None


class FileStoreStatus(_Model):
    backend: Literal[Backend.FILE]
    path: str
    up: bool
    error: str | None
    pending: dict[str, PendingWrite]  # route -> its write still pending


class RedisStoreStatus(_Model):
    backend: Literal[Backend.REDIS]
    url: str
    up: bool
    error: str | None
    leader: bool  # this replica holds the lease: it keeps the time and judges
    pending: dict[str, PendingWrite]


StoreStatus = Annotated[FileStoreStatus | RedisStoreStatus, Field(discriminator="backend")]
_STORE_STATUS: TypeAdapter[FileStoreStatus | RedisStoreStatus] = TypeAdapter(StoreStatus)


def store_status(described: Mapping[str, Any],
                 pending: Mapping[str, PendingWrite]) -> FileStoreStatus | RedisStoreStatus:
    """A state store's `describe()` and the writes still pending, as /status shows them."""
    return _STORE_STATUS.validate_python({**described, "pending": pending})


class EndpointStatus(_Model):
    url: str
    up: bool  # in rotation: both checks allow it
    consecutive_failures: int
    ejections: int
    passive: str = "up"  # "up" or "ejected"
    active: str = "off"  # "up", "down", or "off" without a health_check
    active_last_result: str = "none"  # "success", "failure", "none" before the first probe
    active_last_error: str | None = None


class VersionStatus(_Model):
    # Percents down to 0.01: a whole number stays an int in the JSON, as it always was.
    configured_weight: int | float
    effective_weight: int | float
    configured_share: float
    realized_share: float | None  # over the realized window; None before any request
    requests_in_window: int
    errors_in_window: int
    error_rate_in_window: float | None
    p50_ms_in_window: float | None
    p99_ms_in_window: float | None
    in_flight: int
    endpoints: list[EndpointStatus]


class _GuardTest(_Model):
    key: str  # the test's name in the plan (version, metric, comparison)
    version: str
    metric: str  # error_rate, p50, p90, p99
    limit_ms: float | None
    against: str | None  # the baseline, for a comparison
    outcome: Outcome


class RateTest(_GuardTest):
    """A limit on the canary's own rate: `events` of `trials` against `threshold`."""

    threshold: float
    events: int
    trials: int
    estimate: float | None
    lower: float | None
    upper: float | None
    log_e_fail: float | None
    log_e_pass: float | None
    fail_at: float
    pass_at: float
    summary: str


class RatioTest(_GuardTest):
    """The canary's rate against the baseline's, at most `allowed_ratio` times it."""

    allowed_ratio: float
    canary_events: int
    canary_trials: int
    baseline_events: int
    baseline_trials: int
    estimate: float | None
    lower: float | None
    upper: float | None
    log_e_fail: float | None
    log_e_pass: float | None
    fail_at: float
    pass_at: float
    summary: str


def _test_kind(value: object) -> str:
    against = value.get("against") if isinstance(value, dict) else getattr(value, "against", None)
    return "ratio" if against is not None else "rate"


GuardTest = Annotated[Annotated[RateTest, Tag("rate")] | Annotated[RatioTest, Tag("ratio")],
                      Discriminator(_test_kind)]


class MetricVerdict(_Open):
    """A custom metric's verdict (`analysis.metrics`); open: counts and gauges differ."""

    key: str
    name: str
    version: str
    against: str | None
    dry_run: bool
    outcome: Outcome
    summary: str
    error: str | None


class GuardReport(_Model):
    """The guard's verdicts for the last segment (`rollout.guard.report`)."""

    outcome: Outcome
    summary: str
    decided_by: str | None
    step: int | None
    current: bool  # of the step the rollout is at
    segment: int
    since: float | None
    checks: int | None
    alpha_per_test: float
    fail_at: float
    pass_at: float
    tests: list[GuardTest]
    metrics: list[MetricVerdict]  # analysis.metrics, beside the built-in tests


class Check(_Open):
    """One line of the check history. Open: lines of older versions differ."""

    result: Outcome


class HeaderRouteStatus(_Model):
    """A header/cookie route in force (`set_header_route`): matching requests go to the
    canary whatever its weight."""

    header: str | None
    cookie: str | None
    match: str  # exact, prefix, regex
    value: str


class MirrorStatus(_Model):
    """The shadow traffic in force on the route: a `set_mirror` step's, or the route's own
    `mirror`."""

    to: str
    percent: float

    @classmethod
    def of(cls, mirror: Mirror | None) -> MirrorStatus | None:
        return None if mirror is None else cls(to=mirror.to, percent=mirror.percent)


class RolloutStatus(_Model):
    strategy: Strategy
    phase: Phase
    revision: str | None
    identity: str
    run: str
    run_started: float
    step: int
    steps: int
    canary: str | None
    baseline: str | None
    pause_reason: PauseReason | None
    abort_reason: str | None
    aborted_at: float | None
    aborted_by: Actor | None
    guard: GuardReport | None
    judging: bool | None  # this replica holds the lease and judges (with analysis only)
    gate: str | None  # why a pre-step webhook holds the step
    write_pending: PendingWrite | None
    analysis_source: Source | None
    prometheus: dict[str, Any] | None  # the last PromQL queries and their error
    # analysis.metrics: each one's PromQL at the latest reading, and its error
    metric_queries: dict[str, dict[str, Any]] | None
    checks: list[Check]
    # The current step's header/cookie routes; empty before their step, after an abort and
    # at promotion. Defaulted: an older proxy's answer has none.
    header_routes: list[HeaderRouteStatus] = []
    # The shadow traffic in force (a `set_mirror` step's, else the route's `mirror`); None:
    # no copies. Defaulted: an older proxy's answer has none.
    mirror: MirrorStatus | None = None
    # Blue-green: the color a change of `active` is validating (`pre_switch`) while the
    # previous one serves; None otherwise.
    switching_to: str | None = None

    @property
    def note(self) -> str | None:
        """Why the rollout is where it is, when something holds or stopped it."""
        return self.abort_reason or (str(self.pause_reason) if self.pause_reason else None) \
            or self.gate


class RouteStatus(_Model):
    name: str
    versions: dict[str, VersionStatus]
    rollout: RolloutStatus


class Status(_Model):
    config: ConfigStatus
    admin: AdminStatus | None = None  # None: no admin guard (an engine alone, in tests)
    ready: bool
    state_store: StoreStatus
    realized_window_seconds: float
    routes: list[RouteStatus]

    def route(self, name: str) -> RouteStatus | None:
        return next((r for r in self.routes if r.name == name), None)


class ActionResult(_Model):
    """The answer to `POST /routes/{route}/{action}`: the rollout as the action left it."""

    route: str
    action: Action
    rollout: RolloutStatus


def to_json(model: BaseModel) -> str:
    """The body the admin API sends: indented, as it always was."""
    return model.model_dump_json(indent=2)
