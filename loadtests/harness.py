"""The machinery of a scenario: child processes, the proxy's config file, the admin API.

Everything here is plain blocking code (subprocess, urllib, time.sleep). The scenario runner
imports locust first, whose gevent monkey-patching makes these calls cooperative; imported
alone (tests, scripts) they simply block. The proxy and the upstreams always run as
subprocesses, so gevent and asyncio never share a process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 20.0


# Ports handed out by this process: the kernel may give the same free port to two binds in
# a row (seen in a bench run: a proxy and its admin API given one port, `admin.listen: same
# address as listen`), so none is handed out twice.
_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free a moment ago (bound and released), never one handed out before (of the
    last 4,096: forgotten past that, long after use, so the search always ends)."""
    if len(_GIVEN) >= 4096:
        _GIVEN.clear()
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def read_response(sock: socket.socket, buffer: bytearray) -> None:
    """One whole 200 response framed by Content-Length (what the benchmarks' upstreams
    send), from `buffer` and then the socket; what follows it stays in `buffer`."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        buffer += _recv(sock)
    head = bytes(buffer[:end]).lower()
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            length = int(value)
    total = end + 4 + length
    while len(buffer) < total:
        buffer += _recv(sock)
    if not head.startswith(b"http/1.1 200"):
        raise RuntimeError(f"unexpected answer: {bytes(buffer[:end])!r}")
    del buffer[:total]


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise RuntimeError("the proxy closed the connection")
    return data


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 2.0) -> Any:
    """GET (or POST `body` as JSON) and decode the JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


class Children:
    """Processes this run started. They stay in our process group, so whoever runs us can end
    the whole tree with one killpg; `stop_all` ends them in reverse order, SIGKILL last."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        # The child keeps its own copy of the descriptor; ours can close at once.
        with open(self.logdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=REPO)
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def stop_all(self, timeout: float = 8.0) -> None:
        procs = list(reversed(self.procs.values()))
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)
        self.procs.clear()


# --- upstreams ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instance:
    name: str
    version: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


class Upstreams:
    """All of a scenario's upstream instances, in one `loadtests.upstream` process."""

    def __init__(self, children: Children, spec: dict[str, str]) -> None:
        """`spec`: instance name -> version, e.g. {"stable-1": "stable", "canary-1": "canary"}."""
        self.instances = {n: Instance(n, v, free_port()) for n, v in spec.items()}
        argv = [sys.executable, "-m", "loadtests.upstream"]
        argv += [f"{i.name}={i.version}:{i.port}" for i in self.instances.values()]
        proc = children.start("upstreams", argv)
        deadline = time.monotonic() + START_TIMEOUT
        for name in self.instances:
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"upstreams did not start:\n"
                                       f"{children.log_tail('upstreams')}")
                try:
                    self.status(name)
                    break
                except (OSError, ValueError):
                    time.sleep(0.1)

    def url(self, name: str) -> str:
        return self.instances[name].url

    def control(self, name: str, **changes: Any) -> dict[str, Any]:
        """POST /_control to one instance: faults, a schedule, or shutdown=True."""
        result: dict[str, Any] = http_json(f"{self.url(name)}/_control", changes)
        return result

    def status(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = http_json(f"{self.url(name)}/_control")
        return result


# --- the proxy ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Proxy:
    """splitproxy as a subprocess, with its config file in `workdir`."""

    children: Children
    workdir: Path
    config: dict[str, Any]
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    edits: list[dict[str, Any]] = field(default_factory=list)  # {"time", "label", "generation"}

    @property
    def path(self) -> Path:
        return self.workdir / "splitproxy.yaml"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    def _full(self, routes: list[dict[str, Any]]) -> dict[str, Any]:
        return {"listen": f"{HOST}:{self.port}", "admin": {"listen": f"{HOST}:{self.admin_port}"},
                **{k: v for k, v in self.config.items() if k != "routes"}, "routes": routes}

    def write(self, routes: list[dict[str, Any]]) -> float:
        """Write the config as an editor would (temp file + rename); returns the wall time."""
        text = yaml.safe_dump(self._full(routes), sort_keys=False)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)
        return time.time()

    def start(self) -> None:
        self.write(self.config["routes"])
        argv = [sys.executable, "-m", "splitproxy", "--log-level", "INFO", "run", "-c",
                str(self.path)]
        proc = self.children.start("splitproxy", argv)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"splitproxy exited with {proc.returncode}:\n"
                                   f"{self.children.log_tail('splitproxy')}")
            try:
                with urllib.request.urlopen(f"{self.admin_url}/readyz", timeout=1.0) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"splitproxy not ready within {START_TIMEOUT:.0f}s:\n"
                           f"{self.children.log_tail('splitproxy')}")

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json(f"{self.admin_url}/status")
        return result

    def edit(self, routes: list[dict[str, Any]], label: str,
             timeout: float = 5.0) -> dict[str, Any]:
        """Write new routes and wait until /status shows a new config generation applied."""
        before = self.status()["config"]["generation"]
        edit: dict[str, Any] = {"time": self.write(routes), "label": label}
        self.config = {**self.config, "routes": routes}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            cfg = status["config"]
            if cfg["generation"] > before:
                edit.update(applied=time.time(), generation=cfg["generation"])
                break
            if cfg["last_reload"]["result"] == "error":
                raise RuntimeError(f"the proxy refused the edit {label!r}: "
                                   f"{cfg['last_reload']['error']}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the proxy did not apply the edit {label!r} within {timeout:.0f}s")
        self.edits.append(edit)
        return edit


def route_view(status: dict[str, Any], name: str) -> dict[str, Any]:
    """The parts of one route in /status the scenarios read, wherever the proxy puts them."""
    route = next((r for r in status.get("routes", []) if r.get("name") == name), None)
    if route is None:
        return {}
    rollout = route.get("rollout") or {}

    def pick(key: str) -> Any:
        return route.get(key, rollout.get(key))

    phase = pick("phase")
    return {
        "phase": phase,
        "aborted": bool(pick("aborted")) or phase == "aborted",
        "abort_reason": pick("abort_reason"),
        "aborted_at": pick("aborted_at"),
        "weights": {v: d.get("effective_weight") for v, d in route.get("versions", {}).items()},
        "checks": pick("checks") or [],
        "pause_reason": pick("pause_reason"),
        "step": pick("step"),
        "guard": pick("guard"),
    }


class StatusLog:
    """/status polled every `interval` seconds: the weights and phase over time."""

    def __init__(self, proxy: Proxy, route: str, interval: float = 0.2) -> None:
        self.proxy = proxy
        self.route = route
        self.interval = interval
        self.rows: list[dict[str, Any]] = []  # {"t", "generation", **route_view}
        self.running = True
        self.errors = 0

    def poll(self) -> dict[str, Any] | None:
        try:
            status = self.proxy.status()
        except (OSError, ValueError):
            self.errors += 1
            return None
        row = {"t": time.time(), "generation": status["config"]["generation"],
               **route_view(status, self.route)}
        self.rows.append(row)
        return row

    def run(self) -> None:
        while self.running:
            self.poll()
            time.sleep(self.interval)

    @property
    def last(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {}

    def first_aborted(self) -> dict[str, Any] | None:
        return next((r for r in self.rows if r.get("aborted")), None)

    def weight_steps(self) -> list[tuple[float, dict[str, int]]]:
        """(time, weights) at each change the poller saw."""
        out: list[tuple[float, dict[str, int]]] = []
        for r in self.rows:
            if not out or r["weights"] != out[-1][1]:
                out.append((r["t"], r["weights"]))
        return out

