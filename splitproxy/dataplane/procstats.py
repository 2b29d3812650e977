"""A worker's own resource use (memory, CPU, descriptors), sent with its counters so the
control process can export it per worker (`splitproxy_worker_*{worker}`); the control
process's own is prometheus-client's ProcessCollector (`process_*`).

Read from /proc as that collector reads it, at most once a second: counting the descriptors
lists /proc/self/fd, which with 10,000 open connections takes milliseconds.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

INTERVAL = 1.0

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class Usage:
    """One process's resource use at one moment."""

    pid: int
    resident_bytes: int  # resident set size
    cpu_seconds: float  # user + system, since the process started
    open_fds: int
    max_fds: int  # the soft RLIMIT_NOFILE
    start_time: float  # Unix time the sampler was created (the worker's start)


class Sampler:
    """Samples this process, reusing the last sample for INTERVAL seconds."""

    def __init__(self) -> None:
        self.started = time.time()
        self._last: Usage | None = None
        self._at = 0.0

    def sample(self) -> Usage | None:
        """This process now (or within INTERVAL); None where /proc is missing."""
        now = time.monotonic()
        if self._last is not None and now - self._at < INTERVAL:
            return self._last
        try:
            with open("/proc/self/statm", "rb") as f:
                resident = int(f.read().split()[1]) * _PAGE
            fds = len(os.listdir("/proc/self/fd"))
        except (OSError, ValueError, IndexError):
            return None
        times = os.times()
        self._last = Usage(os.getpid(), resident, times.user + times.system, fds,
                           resource.getrlimit(resource.RLIMIT_NOFILE)[0], self.started)
        self._at = now
        return self._last
