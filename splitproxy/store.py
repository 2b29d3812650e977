"""Rollout state persistence: every transition is written, so an abort survives restarts.

`StateStore` is the interface; `FileStore` keeps a JSON file beside the config (default).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Protocol

from splitproxy.config import Config, ConfigError
from splitproxy.rollout import RouteState

log = logging.getLogger("splitproxy.store")


class StateStore(Protocol):
    async def load(self) -> dict[str, RouteState]: ...
    async def save(self, states: dict[str, RouteState]) -> None: ...


def state_path(config: Config, config_path: Path) -> Path:
    if config.state.path:
        path = Path(config.state.path)
        return path if path.is_absolute() else config_path.parent / path
    return config_path.with_name(config_path.stem + ".state.json")


class FileStore:
    """A JSON file written atomically: temp file, fsync, rename."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_error: str | None = None  # the last write's failure; cleared by a good write
        self.load_error: str | None = None  # what was wrong with the file at start-up

    def check_writable(self) -> None:
        """Fail at start-up, not at the first abort, when the state cannot be written."""
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".splitproxy-probe-",
                                       suffix=".tmp")
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise ConfigError([
                f"state.path: cannot write rollout state to {self.path}: {exc.strerror}"
            ]) from exc

    async def load(self) -> dict[str, RouteState]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.error("cannot read rollout state %s (%s): starting fresh", self.path, exc)
            self.load_error = f"unreadable state file, started fresh: {exc}"
            return {}
        try:
            data = json.loads(raw)
            return {name: RouteState.from_json(s) for name, s in data["routes"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            log.error("rollout state %s is corrupt (%s): starting fresh", self.path, exc)
            self.load_error = f"corrupt state file, started fresh: {exc}"
            return {}

    async def save(self, states: dict[str, RouteState]) -> None:
        body = json.dumps(
            {"version": 1, "routes": {n: s.to_json() for n, s in states.items()}}, indent=1
        )
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".splitproxy-state-",
                                       suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
            self.last_error = None
        except OSError as exc:
            # Serving goes on with the state in memory; /status shows the problem.
            self.last_error = f"cannot write {self.path}: {exc}"
            log.error("%s", self.last_error)
