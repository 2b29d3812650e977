"""`performance.busy_poll: auto` (`cpuidle.choose`): it polls on a virtual machine whose
kernel halts idle CPUs at once, with no CPU quota and two CPUs or more; anywhere else it does
not. Each machine is built out of the files the kernel would show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from splitproxy.dataplane.cpuidle import AUTO_WINDOW, Choice, choose, cpu_quota

VM_FLAGS = "flags\t\t: fpu vme de pse tsc msr hypervisor lahf_lm\n"
METAL_FLAGS = "flags\t\t: fpu vme de pse tsc msr lahf_lm\n"


def machine(root: Path, *, flags: str = VM_FLAGS, cgroup: str = "0::/\n",
            files: dict[str, str] | None = None) -> Path:
    everything = {"proc/cpuinfo": "processor\t: 0\n" + flags, "proc/self/cgroup": cgroup,
                  **(files or {})}
    for name, text in everything.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


HALTPOLL = "sys/devices/system/cpu/cpuidle/current_driver"
HALTPOLL_NS = "sys/module/haltpoll/parameters/guest_halt_poll_ns"


def test_a_virtual_machine_that_halts_at_once_with_cpus_to_spare_polls(tmp_path: Path) -> None:
    root = machine(tmp_path, files={HALTPOLL: "haltpoll\n", HALTPOLL_NS: "0\n",
                                    "sys/fs/cgroup/cpu.max": "max 100000\n"})
    choice = choose("auto", root, cpus=2)
    assert choice.window == AUTO_WINDOW
    assert choice.reason == ("auto: a virtual machine whose kernel halts idle CPUs at once, "
                             "no CPU quota, 2 CPUs")


@pytest.mark.parametrize(("flags", "files", "cpus", "reason"), [
    (METAL_FLAGS, {}, 8, "auto: not a virtual machine (waking a CPU is cheap)"),
    (VM_FLAGS, {HALTPOLL: "haltpoll\n", HALTPOLL_NS: "200000\n"}, 8,
     "auto: the guest kernel polls already (haltpoll, guest_halt_poll_ns=200000)"),
    (VM_FLAGS, {}, 1, "auto: one CPU (polling would take it from the client and upstream)"),
])
def test_auto_does_not_poll_where_it_would_not_pay(tmp_path: Path, flags: str,
                                                   files: dict[str, str], cpus: int,
                                                   reason: str) -> None:
    assert choose("auto", machine(tmp_path, flags=flags, files=files), cpus=cpus).reason == reason
    assert choose("auto", tmp_path, cpus=cpus).window == 0.0


def test_a_hypervisor_named_in_sys_counts_as_a_virtual_machine(tmp_path: Path) -> None:
    root = machine(tmp_path, flags=METAL_FLAGS, files={"sys/hypervisor/type": "xen\n"})
    assert choose("auto", root, cpus=2).window == AUTO_WINDOW


def test_a_cgroup_v2_quota_anywhere_above_the_process_turns_it_off(tmp_path: Path) -> None:
    pod = "sys/fs/cgroup/kubepods.slice/pod1"
    root = machine(tmp_path, cgroup="0::/kubepods.slice/pod1/app\n",
                   files={f"{pod}/cpu.max": "50000 100000\n", f"{pod}/app/cpu.max": "max 100000\n"})
    quota = f"{tmp_path}/{pod}/cpu.max: 50000 100000"
    assert cpu_quota(root) == quota
    assert choose("auto", root, cpus=4) == Choice(0.0, f"auto: under a CPU quota ({quota})")


def test_a_container_sees_its_own_cgroup_as_the_root(tmp_path: Path) -> None:
    root = machine(tmp_path, cgroup="0::/\n", files={"sys/fs/cgroup/cpu.max": "200000 100000\n"})
    assert cpu_quota(root) == f"{tmp_path}/sys/fs/cgroup/cpu.max: 200000 100000"


@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct"])
def test_a_cgroup_v1_quota_turns_it_off_and_minus_one_is_none(tmp_path: Path,
                                                               mount: str) -> None:
    quota = f"sys/fs/cgroup/{mount}/docker/abc/cpu.cfs_quota_us"
    root = machine(tmp_path, cgroup="4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
                   files={quota: "150000\n"})
    assert cpu_quota(root) == f"{tmp_path}/{quota}: 150000"
    (tmp_path / quota).write_text("-1\n")
    assert cpu_quota(root) is None
    assert choose("auto", root, cpus=2).window == AUTO_WINDOW


def test_unreadable_or_odd_files_mean_no_quota(tmp_path: Path) -> None:
    root = machine(tmp_path, cgroup="garbage\n1:cpu:/../../etc\n0::\n",
                   files={"sys/fs/cgroup/cpu.max": "\n", "sys/fs/cgroup/cpu/cpu.cfs_quota_us":
                          "lots\n", "proc/self/mountinfo": "1 2\n- - -\n3 4 5 6 7 8 - cgroup2\n"})
    assert cpu_quota(root) is None
    assert cpu_quota(tmp_path / "nothing-here") is None


def test_a_window_in_the_config_is_taken_as_it_is(tmp_path: Path) -> None:
    assert choose(20e-6, tmp_path, cpus=1).window == 20e-6
    assert choose(0.0, tmp_path, cpus=8).reason == "off in the config"


def test_a_process_pinned_to_one_cpu_counts_one(tmp_path: Path) -> None:
    root = machine(tmp_path)
    code = ("import os, sys; from pathlib import Path; os.sched_setaffinity(0, {min(os."
            "sched_getaffinity(0))}); from splitproxy.dataplane.cpuidle import choose; "
            "print(choose('auto', Path(sys.argv[1])).reason)")
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == ("auto: one CPU (polling would take it from the client and "
                                   "upstream)")


def mountinfo(*mounts: tuple[str, str, str, str]) -> str:
    """Lines of /proc/self/mountinfo for (root, mount point, type, super options)."""
    return "".join(f"{30 + i} 23 0:{40 + i} {root} {point} rw,nosuid shared:{i} - {kind} "
                   f"{kind} {options}\n" for i, (root, point, kind, options) in enumerate(mounts))


def test_cgroups_mounted_elsewhere_are_found_through_mountinfo(tmp_path: Path) -> None:
    info = mountinfo(("/", "/run/my\\040cgroups", "cgroup2", "rw,nsdelegate"),
                     ("/", "/sys/fs/cgroup/memory", "cgroup", "rw,memory"))
    root = machine(tmp_path, cgroup="0::/app.slice/web\n",
                   files={"proc/self/mountinfo": info,
                          "run/my cgroups/app.slice/cpu.max": "100000 100000\n",
                          # where it usually is, but not mounted here: not read
                          "sys/fs/cgroup/app.slice/web/cpu.max": "max 100000\n"})
    assert cpu_quota(root) == f"{tmp_path}/run/my cgroups/app.slice/cpu.max: 100000 100000"


def test_a_v1_cpu_mount_that_shows_a_subtree_is_read_from_its_root(tmp_path: Path) -> None:
    info = mountinfo(("/kubepods/pod1", "/cg/cpu", "cgroup", "rw,cpu,cpuacct"))
    root = machine(tmp_path, cgroup="5:cpu,cpuacct:/kubepods/pod1/app\n",
                   files={"proc/self/mountinfo": info,
                          "cg/cpu/app/cpu.cfs_quota_us": "-1\n",
                          "cg/cpu/cpu.cfs_quota_us": "50000\n"})
    assert cpu_quota(root) == f"{tmp_path}/cg/cpu/cpu.cfs_quota_us: 50000"
    (tmp_path / "cg/cpu/cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(root) is None
