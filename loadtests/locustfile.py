"""Locust users for splitproxy: who answered each request, per user, over time.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080

Each simulated user lives through *sessions* of SPLIT_SESSION_REQUESTS requests; a session is
one visitor with its own cookie jar and, depending on its kind, headers:

* ``user``: an ``X-User-Id`` (SPLIT_HASH_HEADER) and a cookie jar -- the proxy's hash key;
* ``cookie``: a cookie jar only, so the sticky cookie is what keeps it on a version;
* ``anon``: neither; every request is a fresh weighted choice;
* ``pinned``: the pin header (SPLIT_PIN_HEADER) naming SPLIT_PIN_VERSION, as a tester would.

The mix is SPLIT_MIX (default ``user=7,cookie=2,anon=1``). Which version answered comes from the
SPLIT_VERSION_HEADER response header (default ``X-Served-By``). Every request is recorded
(time, latency, status, version, session, kind) in `RECORDER`; the scenario runner reads it,
and SPLIT_SAMPLES_FILE, if set, receives them as JSON when the test stops.

In locust's web UI the request names carry the version (``GET / [canary]``), so the statistics
table has one live row per version, and the "Versions" tab shows each version's share with its
95% interval, errors and stickiness, against SPLIT_WEIGHTS (``stable=90,canary=10``) or the
weights the proxy reports at SPLIT_ADMIN_URL (e.g. ``http://127.0.0.1:9901``).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locust import HttpUser, events, task
from locust.env import Environment

try:
    from loadtests import analysis
except ImportError:  # `locust -f loadtests/locustfile.py` puts only loadtests/ on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtests import analysis

from loadtests.analysis import ANON, COOKIE, PINNED, USER, Sample

KINDS = (USER, COOKIE, ANON, PINNED)


def _weights(text: str) -> dict[str, int]:
    """``stable=90,canary=10`` -> {"stable": 90, "canary": 10}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        out[name.strip()] = int(value)
    return out


@dataclass(slots=True)
class Settings:
    """What the users do; read from SPLIT_* environment variables, or set by the runner."""

    path: str = "/"
    version_header: str = "X-Served-By"
    instance_header: str = "X-Upstream-Instance"
    hash_header: str = "X-User-Id"
    pin_header: str = "X-Splitproxy-Version"
    pin_version: str = ""
    mix: dict[str, int] = field(default_factory=lambda: {USER: 7, COOKIE: 2, ANON: 1})
    session_requests: int = 20
    wait: tuple[float, float] = (0.05, 0.25)  # seconds between a user's requests
    timeout: float = 10.0
    weights: dict[str, int] = field(default_factory=dict)  # for the live chi-square
    admin_url: str = ""
    samples_file: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        s = cls()
        s.path = e.get("SPLIT_PATH", s.path)
        s.version_header = e.get("SPLIT_VERSION_HEADER", s.version_header)
        s.hash_header = e.get("SPLIT_HASH_HEADER", s.hash_header)
        s.pin_header = e.get("SPLIT_PIN_HEADER", s.pin_header)
        s.pin_version = e.get("SPLIT_PIN_VERSION", s.pin_version)
        if "SPLIT_MIX" in e:
            s.mix = _weights(e["SPLIT_MIX"])
            if set(s.mix) - set(KINDS) or sum(s.mix.values()) <= 0:
                raise ValueError(f"SPLIT_MIX: kinds are {', '.join(KINDS)}, got {e['SPLIT_MIX']!r}")
        if s.mix.get(PINNED) and not s.pin_version:
            raise ValueError("SPLIT_MIX has pinned sessions: set SPLIT_PIN_VERSION")
        s.session_requests = int(e.get("SPLIT_SESSION_REQUESTS", s.session_requests))
        if "SPLIT_WAIT" in e:
            lo, _, hi = e["SPLIT_WAIT"].partition(",")
            s.wait = (float(lo), float(hi or lo))
        s.weights = _weights(e.get("SPLIT_WEIGHTS", ""))
        s.admin_url = e.get("SPLIT_ADMIN_URL", "").rstrip("/")
        s.samples_file = e.get("SPLIT_SAMPLES_FILE", "")
        return s


class Recorder:
    """Every request's `Sample`, plus running counts cheap enough for the live UI."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.cookie_seen = False  # did the proxy set a sticky cookie? (then cookies stick)
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.assigned: Counter[str] = Counter()  # assignments, as if weights never changed
        self._first: dict[str, str] = {}
        self._seen: defaultdict[str, set[str]] = defaultdict(set)
        self.sticky_violations = 0

    def add(self, s: Sample) -> None:
        self.samples.append(s)
        v = s.version or analysis.NO_VERSION
        self.requests[v] += 1
        self.errors[v] += s.error
        if s.kind == PINNED or s.version is None:
            return
        if s.kind == ANON:
            self.assigned[v] += 1
        elif s.user not in self._first:
            self._first[s.user] = v
            self.assigned[v] += 1
        if s.kind == USER or (s.kind == COOKIE and self.cookie_seen):
            seen = self._seen[s.user]
            if v not in seen and seen:
                self.sticky_violations += len(seen) == 1  # count each session once
            seen.add(v)


SETTINGS = Settings.from_env()
RECORDER = Recorder()


class SplitUser(HttpUser):
    """A stream of sessions against the proxy; see the module docstring."""

    abstract = False

    def wait_time(self) -> float:
        lo, hi = SETTINGS.wait
        return random.uniform(lo, hi)

    def on_start(self) -> None:
        self.kind = USER
        self.session = ""
        self.left = 0

    def _new_session(self) -> None:
        kinds = [k for k in KINDS if SETTINGS.mix.get(k)]
        self.kind = random.choices(kinds, [SETTINGS.mix[k] for k in kinds])[0]
        self.session = f"{self.kind[0]}-{uuid.uuid4().hex[:12]}"
        self.left = SETTINGS.session_requests
        self.client.cookies.clear()

    @task
    def visit(self) -> None:
        if self.left <= 0:
            self._new_session()
        self.left -= 1
        s = SETTINGS
        headers: dict[str, str] = {}
        if self.kind == USER:
            headers[s.hash_header] = self.session
        elif self.kind == PINNED:
            headers[s.pin_header] = s.pin_version
        if self.kind in (ANON, PINNED):
            self.client.cookies.clear()
        with self.client.get(s.path, headers=headers, catch_response=True,
                             timeout=s.timeout) as resp:
            status = int(resp.status_code or 0)
            version = resp.headers.get(s.version_header) if status else None
            if status and "set-cookie" in resp.headers:
                RECORDER.cookie_seen = True
            meta = resp.request_meta
            RECORDER.add(Sample(
                t=float(meta["start_time"]),
                latency_ms=float(meta["response_time"]),
                status=status,
                version=version,
                user=self.session,
                kind=self.kind,
                instance=resp.headers.get(s.instance_header) if status else None,
            ))
            # One statistics row per version: the live split in locust's own table.
            meta["name"] = f"{s.path} [{version or analysis.NO_VERSION}]"
            if 200 <= status < 400:
                resp.success()
            else:
                resp.failure(f"HTTP {status}" if status else f"no response: {resp.error}")


# --- reporting: the web UI's "Versions" tab and the summary at the end --------------------------

_admin_cache: tuple[float, dict[str, int]] = (0.0, {})


def configured_weights() -> dict[str, int]:
    """SPLIT_WEIGHTS, else the effective weights of the first route at SPLIT_ADMIN_URL."""
    global _admin_cache
    if SETTINGS.weights or not SETTINGS.admin_url:
        return SETTINGS.weights
    fetched, weights = _admin_cache
    if time.monotonic() - fetched > 2.0:
        try:
            with urllib.request.urlopen(f"{SETTINGS.admin_url}/status", timeout=1.0) as r:
                route = json.load(r)["routes"][0]
            weights = {v: int(d["effective_weight"]) for v, d in route["versions"].items()}
        except (OSError, ValueError, KeyError, IndexError):
            weights = {}
        _admin_cache = (time.monotonic(), weights)
    return weights


def version_rows(recorder: Recorder, weights: dict[str, int]) -> list[dict[str, Any]]:
    total = sum(recorder.requests.values())
    n = sum(recorder.assigned.values())
    wsum = sum(weights.values()) or 1
    rows = []
    for v in sorted(set(recorder.requests) | set(weights)):
        lo, hi = analysis.wilson_interval(recorder.assigned.get(v, 0), n)
        k = recorder.requests.get(v, 0)
        rows.append({
            "version": v,
            "requests": k,
            "share": f"{100 * k / total:.1f}%" if total else "-",
            "assigned": f"{100 * recorder.assigned.get(v, 0) / n:.1f}% "
                        f"[{100 * lo:.1f}, {100 * hi:.1f}]" if n else "-",
            "weight": f"{100 * weights[v] / wsum:.1f}%" if v in weights else "-",
            "errors": f"{recorder.errors.get(v, 0)} ({100 * recorder.errors.get(v, 0) / k:.1f}%)"
                      if k else "0",
        })
    return rows


def summary(recorder: Recorder, weights: dict[str, int]) -> str:
    lines = ["version      requests  share   assigned share [95% interval]  weight  errors"]
    for r in version_rows(recorder, weights):
        lines.append(f"{r['version']:<12} {r['requests']:>8}  {r['share']:>6}  "
                     f"{r['assigned']:<29} {r['weight']:>6}  {r['errors']}")
    if weights:
        chi = analysis.chi_square(recorder.assigned, weights)
        lines.append(f"chi-square vs weights {weights}: statistic {chi.statistic:.3f}, "
                     f"dof {chi.dof}, p = {chi.p_value:.4g} (n = {chi.n} assignments)")
    lines.append(f"users who saw more than one version: {recorder.sticky_violations} "
                 "(0 expected while weights are constant)")
    return "\n".join(lines)


def _on_init(environment: Environment, **_: Any) -> None:
    web_ui = environment.web_ui
    if web_ui is None or web_ui.app is None:
        return
    from flask import Response, request

    columns = [("version", "Version"), ("requests", "Requests"), ("share", "Request share"),
               ("assigned", "Assigned share [95% interval]"), ("weight", "Weight"),
               ("errors", "Errors")]
    web_ui.template_args["extended_tabs"] = [{"title": "Versions", "key": "versions"}]
    web_ui.template_args["extended_tables"] = [
        {"key": "versions", "structure": [{"key": k, "title": t} for k, t in columns]}
    ]

    def _versions(response: Response) -> Response:
        if request.path != "/stats/requests" or not response.is_json:
            return response
        data = response.get_json()
        data["extended_stats"] = [
            {"key": "versions", "data": version_rows(RECORDER, configured_weights())}
        ]
        response.set_data(json.dumps(data))
        return response

    web_ui.app.after_request(_versions)


def _on_quitting(environment: Environment, **_: Any) -> None:
    if SETTINGS.samples_file:
        rows = [s.to_row() for s in RECORDER.samples]
        Path(SETTINGS.samples_file).write_text(json.dumps(rows))
    if environment.parsed_options is not None and RECORDER.samples:  # the locust CLI
        sys.stderr.write("\nsplitproxy versions:\n" + summary(RECORDER, configured_weights())
                         + "\n")


events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_on_quitting)  # type: ignore[no-untyped-call]
