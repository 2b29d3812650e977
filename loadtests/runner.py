"""One scenario run: upstreams and proxy as subprocesses, locust in this process, a timeline.

`Run` is what a scenario function gets: it starts the pieces, keeps the clock (`at(s)` waits
until `s` seconds after the load started), marks events for the report, and collects the
expectations. Importing this module imports locust, which monkey-patches the standard library
with gevent: the scenario runner's process is a gevent process, the proxy's is an asyncio one.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import gevent  # type: ignore[import-untyped]  # no stubs are installed
import locust
from locust.env import Environment

from loadtests import analysis, locustfile
from loadtests.analysis import Epoch, Sample
from loadtests.harness import Children, Proxy, StatusLog, Upstreams

EPOCH_MARGIN = 0.1  # s: a request sent this close to a weight change may be routed either way
STOP_REQUESTED = 0  # set to 128 + signal number by the scenario runner's SIGTERM handler


@dataclass(frozen=True, slots=True)
class Expect:
    """One expectation of a scenario and whether the run met it."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"  [{'ok' if self.ok else 'FAIL'}] {self.name}: {self.detail}"


@dataclass(slots=True)
class Run:
    name: str
    duration: float
    short: bool
    users: int
    alpha: float
    report_dir: Path
    route: str = "app"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="splitproxy-lt-")))
    children: Children | None = None
    upstreams: Upstreams | None = None
    proxy: Proxy | None = None
    status: StatusLog | None = None
    env: Environment | None = None
    t0: float = 0.0
    t_end: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)  # {"t", "label", "kind"}
    expects: list[Expect] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # numbers for the JSON report
    _greenlets: list[gevent.Greenlet] = field(default_factory=list)

    # -- life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> Run:
        self.children = Children(self.workdir)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_load()
        for g in self._greenlets:
            g.kill(block=False)
        if self.children is not None:
            self.children.stop_all()

    def start_upstreams(self, instances: dict[str, str]) -> None:
        """Start the upstream instances, instance name -> version."""
        assert self.children is not None
        self.upstreams = Upstreams(self.children, instances)

    def start_proxy(self, routes: list[dict[str, Any]], **config: Any) -> None:
        assert self.children is not None
        self.proxy = Proxy(self.children, self.workdir, {"routes": routes, **config})
        self.proxy.start()
        self.status = StatusLog(self.proxy, self.route)
        self.status.poll()
        self._greenlets.append(gevent.spawn(self.status.run))

    def url(self, instance: str) -> str:
        assert self.upstreams is not None
        return self.upstreams.url(instance)

    def start_load(self, **settings: Any) -> None:
        """Start the locust users; `settings` override `locustfile.Settings` fields."""
        assert self.proxy is not None
        s = locustfile.Settings()
        for key, value in settings.items():
            if not hasattr(s, key):
                raise TypeError(f"unknown locust setting {key!r}")
            setattr(s, key, value)
        locustfile.SETTINGS = s
        locustfile.RECORDER = locustfile.Recorder()
        self.env = Environment(user_classes=[locustfile.SplitUser], host=self.proxy.url,
                               events=locust.events)
        runner = self.env.create_local_runner()
        runner.start(self.users, spawn_rate=max(1, self.users))
        self.t0 = time.time()
        self.mark("load started", "load")

    def stop_load(self) -> None:
        if self.env is not None and self.env.runner is not None:
            self.env.runner.quit()
            self.env = None
            self.t_end = time.time()
        if self.status is not None:
            self.status.running = False

    # -- the timeline ----------------------------------------------------------------------------
    def at(self, offset: float) -> None:
        """Wait until `offset` seconds after the load started, watching the children."""
        assert self.children is not None
        while (left := self.t0 + offset - time.time()) > 0:
            self.children.check_alive()
            if STOP_REQUESTED:
                raise SystemExit(STOP_REQUESTED)
            time.sleep(min(left, 0.25))

    def mark(self, label: str, kind: str = "event", t: float | None = None) -> float:
        t = time.time() if t is None else t
        self.events.append({"t": t, "label": label, "kind": kind})
        say(f"{self.name}: {t - self.t0:5.1f}s {label}" if self.t0 else f"{self.name}: {label}")
        return t

    def edit(self, routes: list[dict[str, Any]], label: str) -> dict[str, Any]:
        assert self.proxy is not None
        edit = self.proxy.edit(routes, label)
        self.mark(f"{label} (applied in {1000 * (edit['applied'] - edit['time']):.0f} ms)",
                  "edit", edit["time"])
        return edit

    # -- results ---------------------------------------------------------------------------------
    @property
    def samples(self) -> list[Sample]:
        return locustfile.RECORDER.samples

    def expect(self, name: str, ok: bool, detail: str) -> bool:
        self.expects.append(Expect(name, bool(ok), detail))
        return ok

    def epochs(self) -> list[Epoch]:
        """Stretches of constant weights, as /status showed them, shrunk by EPOCH_MARGIN at the
        end; only the part while the load ran."""
        assert self.status is not None
        rows = [r for r in self.status.rows if r.get("weights")]
        out: list[Epoch] = []
        start = 0
        for i in range(1, len(rows) + 1):
            if i == len(rows) or rows[i]["weights"] != rows[start]["weights"]:
                lo = max(rows[start]["t"], self.t0)
                hi = (rows[i - 1]["t"] if i < len(rows) else self.t_end) - EPOCH_MARGIN
                if hi > lo:
                    w = rows[start]["weights"]
                    label = "/".join(f"{v} {w[v]}" for v in w)
                    out.append(Epoch(lo, hi, w, label))
                start = i
        return out

    def check_shares(self, cookie_sticky: bool, min_n: int = 30) -> None:
        """Per epoch: the chi-square test at `alpha` and the 95% intervals, into the report."""
        rows = []
        for epoch in self.epochs():
            counts = analysis.assignments(self.samples, epoch, cookie_sticky)
            chi = analysis.chi_square(counts, epoch.weights)
            shares = analysis.share_report(counts, epoch.weights)
            rows.append({"epoch": [epoch.start - self.t0, epoch.end - self.t0],
                         "weights": dict(epoch.weights), "chi_square": chi.to_dict(),
                         "shares": shares})
            text = ", ".join(
                f"{v} {100 * d['share']:.1f}% [{100 * d['interval'][0]:.1f}, "
                f"{100 * d['interval'][1]:.1f}]{'' if d['within'] else ' (outside)'}"
                for v, d in shares.items() if d["share"] is not None
            )
            if chi.n < min_n:
                self.expect(f"share {epoch.label}", False,
                            f"only {chi.n} assignments (< {min_n}): too little traffic to test")
                continue
            self.expect(
                f"share {epoch.label}", chi.p_value >= self.alpha,
                f"n={chi.n}: {text}; chi2={chi.statistic:.2f} dof={chi.dof} "
                f"p={chi.p_value:.3g} (need p >= {self.alpha:g})",
            )
        self.facts["shares"] = rows

    def check_sticky(self, kinds: tuple[str, ...]) -> None:
        bad = analysis.sticky_violations(self.samples, self.epochs(), kinds)
        users = len({s.user for s in self.samples if s.kind in kinds})
        self.facts["sticky_violations"] = bad[:20]
        self.expect("stickiness", not bad,
                    f"{len(bad)} of {users} {'/'.join(kinds)} sessions saw more than one version "
                    "while weights were constant")

    def check_no_failures(self, label: str = "0 failed requests") -> None:
        bad = [s for s in self.samples if not s.ok]
        kinds: dict[str, int] = {}
        for s in bad:
            key = f"HTTP {s.status}" if s.status else "no response"
            kinds[key] = kinds.get(key, 0) + 1
        self.expect(label, not bad, f"{len(bad)} of {len(self.samples)} requests failed"
                    + (f" ({kinds})" if kinds else ""))

    def summary(self) -> dict[str, Any]:
        return {
            "requests": len(self.samples),
            "rps": len(self.samples) / max(1e-9, self.t_end - self.t0),
            "by_version": analysis.errors_by_version(self.samples),
        }

    @property
    def passed(self) -> bool:
        return bool(self.expects) and all(e.ok for e in self.expects)


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
