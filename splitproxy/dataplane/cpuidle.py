"""What `performance.busy_poll: auto` (the default) means on this machine: poll for
AUTO_WINDOW after reads where a sleeping CPU is slow to wake and polling takes nobody's CPU;
otherwise not at all.

Polling pays where waking a halted CPU is a trip through a hypervisor (tens of microseconds),
so only on a virtual machine, and only where the guest kernel does not poll by itself
(`cpuidle_haltpoll` with `guest_halt_poll_ns` > 0 does, for every process). It costs where
the CPU it burns is someone else's: under a CPU quota (a Kubernetes limit counts every
polled microsecond against the pod) and on a single CPU (the client or the service beside a
sidecar is who waits). Each of these is read from /proc and /sys at start and on reload;
`root` lets the tests build a machine out of files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

AUTO_WINDOW = 50e-6


@dataclass(frozen=True, slots=True)
class Choice:
    """The window a worker polls for (0: it does not) and why, for the log."""

    window: float
    reason: str


def choose(setting: float | Literal["auto"], root: Path = Path("/"),
           cpus: int | None = None) -> Choice:
    """`performance.busy_poll` as this worker applies it."""
    if setting != "auto":
        return Choice(setting, "set in the config" if setting else "off in the config")
    if not _virtual(root):
        return Choice(0.0, "auto: not a virtual machine (waking a CPU is cheap)")
    if (kernel := _kernel_polls(root)) is not None:
        return Choice(0.0, f"auto: the guest kernel polls already ({kernel})")
    if (quota := cpu_quota(root)) is not None:
        return Choice(0.0, f"auto: under a CPU quota ({quota})")
    if cpus is None:
        cpus = _cpus()
    if cpus < 2:
        return Choice(0.0, "auto: one CPU (polling would take it from the client and upstream)")
    return Choice(AUTO_WINDOW, f"auto: a virtual machine whose kernel halts idle CPUs at once, "
                               f"no CPU quota, {cpus} CPUs")


def _cpus() -> int:
    """The CPUs this process may run on (its affinity: a pinned process counts one)."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux only
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _virtual(root: Path) -> bool:
    # x86 guests have the `hypervisor` CPU flag; Xen and others also publish /sys/hypervisor.
    if (_read(root / "sys/hypervisor/type") or "") != "":
        return True
    cpuinfo = _read(root / "proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return "hypervisor" in line.split(":", 1)[-1].split()
    return False


def _kernel_polls(root: Path) -> str | None:
    driver = _read(root / "sys/devices/system/cpu/cpuidle/current_driver")
    poll_ns = _read(root / "sys/module/haltpoll/parameters/guest_halt_poll_ns")
    if driver == "haltpoll" and poll_ns is not None and poll_ns.isdigit() and int(poll_ns) > 0:
        return f"haltpoll, guest_halt_poll_ns={poll_ns}"
    return None


def cpu_quota(root: Path = Path("/")) -> str | None:
    """The CPU quota this process runs under, in any cgroup above it (v2 `cpu.max`, v1
    `cpu.cfs_quota_us`), as the file says it; None without one."""
    paths: dict[str, str] = {}  # hierarchy (v1: the cpu controller's, v2) -> our cgroup in it
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and controllers == "":
            paths["v2"] = path
        elif "cpu" in controllers.split(","):
            paths["v1"] = path
    for version, base, mount_root in _cgroup_mounts(root):
        ours = paths.get(version)
        if ours is None:
            continue
        if mount_root != "/" and ours.startswith(mount_root + "/"):
            ours = ours[len(mount_root):]  # the mount shows a subtree: our path within it
        name = "cpu.max" if version == "v2" else "cpu.cfs_quota_us"
        if (found := _quota_above(base, ours, name)) is not None:
            return found
    return None


# Where distributions mount them, for a /proc without mountinfo.
_USUAL_MOUNTS = (("v2", "sys/fs/cgroup"), ("v2", "sys/fs/cgroup/unified"),
                 ("v1", "sys/fs/cgroup/cpu"), ("v1", "sys/fs/cgroup/cpu,cpuacct"),
                 ("v1", "sys/fs/cgroup/cpuacct,cpu"))
_OCTAL = re.compile(r"\\([0-7]{3})")


def _cgroup_mounts(root: Path) -> list[tuple[str, Path, str]]:
    """(hierarchy, where it is mounted, the cgroup its mount shows as its root) of each
    cgroup2 mount and each v1 mount of the cpu controller, from /proc/self/mountinfo."""
    found: list[tuple[str, Path, str]] = []
    for line in (_read(root / "proc/self/mountinfo") or "").splitlines():
        # ID PARENT MAJOR:MINOR ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
        fields = line.split()
        if "-" not in fields[5:]:
            continue
        dash = fields.index("-", 5)
        if len(fields) < dash + 4:
            continue
        kind, options = fields[dash + 1], fields[dash + 3].split(",")
        if kind == "cgroup2" or (kind == "cgroup" and "cpu" in options):
            found.append(("v2" if kind == "cgroup2" else "v1",
                          root / _unescape(fields[4]).lstrip("/"), _unescape(fields[3])))
    return found or [(hierarchy, root / path, "/") for hierarchy, path in _USUAL_MOUNTS]


def _unescape(field: str) -> str:
    """mountinfo writes a space in a path as \\040 (and tab, newline, backslash alike)."""
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), field)


def _quota_above(base: Path, path: str, name: str) -> str | None:
    """The first limit in `name` from the process's cgroup up to the hierarchy's root (a
    container sees its own cgroup as the root, so both are read)."""
    parts = [p for p in path.split("/") if p and p != ".."]
    for depth in range(len(parts), -1, -1):
        file = base.joinpath(*parts[:depth], name)
        words = (_read(file) or "").split()
        if not words:
            continue
        if name == "cpu.max":
            limited = words[0] != "max"
        else:
            limited = words[0].isdigit() and int(words[0]) > 0  # -1: none
        if limited:
            return f"{file}: {' '.join(words)}"
    return None
