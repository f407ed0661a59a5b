"""sandbox/cgroups.py without root: layout detection from /proc texts, and cgroup v2 against a
faked cgroupfs (pyfakefs; the v1 side is tested for real in tests/integration/test_limits.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stepbuild.errors import SandboxError
from stepbuild.sandbox import cgroups
from stepbuild.sandbox.cgroups import Hierarchy, Layout
from stepbuild.sandbox.limits import MIB, UNLIMITED, Limits

# This project's CI machine: v1 controllers apart, an empty v2 at /sys/fs/cgroup/unified
V1_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_OWN = "8:pids:/\n4:memory:/ci/job1\n3:cpuset:/\n1:cpu:/\n0::/\n"
V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V2_OWN = "0::/ci/job1\n"

V2_FILES = ("cgroup.procs", "cgroup.controllers", "cgroup.subtree_control", "cgroup.kill",
            "memory.max", "memory.swap.max", "pids.max", "cpu.weight", "cpu.max",
            "cpuset.cpus")


def test_detect_v1_per_controller() -> None:
    layout = cgroups.detect(V1_MOUNTINFO, V1_OWN)
    assert layout is not None and layout.version == 1
    assert set(layout.hierarchies) == {"cpu", "cpuset", "memory", "pids"}
    memory = layout.hierarchies["memory"]
    assert memory.directory(memory.own_path) == "/sys/fs/cgroup/memory/ci/job1"
    assert layout.hierarchies["pids"].directory("/") == "/sys/fs/cgroup/pids"


def test_detect_v1_combined_controllers_and_a_namespaced_root() -> None:
    mountinfo = ("32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup"
                 " rw,cpu,cpuacct\n"
                 "35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    own = "4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc/sub\n"
    layout = cgroups.detect(mountinfo, own)
    assert layout is not None and layout.version == 1
    cpu = layout.hierarchies["cpu"]
    assert cpu.directory(cpu.own_path) == "/sys/fs/cgroup/cpu,cpuacct/sub"
    memory = layout.hierarchies["memory"]
    assert memory.directory(memory.own_path) == "/sys/fs/cgroup/memory"


def test_detect_v2_and_none() -> None:
    layout = cgroups.detect(V2_MOUNTINFO, V2_OWN)
    assert layout == Layout(2, {"": Hierarchy("/sys/fs/cgroup", "/", "/ci/job1")})
    assert cgroups.detect("", "") is None


@pytest.fixture
def v2(fs: object, monkeypatch: pytest.MonkeyPatch) -> Layout:
    """A fake v2 cgroupfs: /sys/fs/cgroup/ci with every controller; mkdir makes the interface
    files a kernel would, rmdir takes them away with the directory."""
    real_mkdir, real_rmdir = os.mkdir, os.rmdir

    def mkdir(path: str, mode: int = 0o777) -> None:
        real_mkdir(path, mode)
        for name in V2_FILES:
            Path(path, name).write_text("")
        Path(path, "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")

    def rmdir(path: str) -> None:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        real_rmdir(path)

    monkeypatch.setattr(cgroups.os, "mkdir", mkdir)
    monkeypatch.setattr(cgroups.os, "rmdir", rmdir)
    monkeypatch.setattr(cgroups, "owner_tag", lambda: "@0badc0de.42.42")
    monkeypatch.setattr(cgroups, "is_dead_work", lambda name: ".13.13-" in name)
    os.makedirs("/sys/fs/cgroup")
    mkdir("/sys/fs/cgroup/ci")
    Path("/sys/fs/cgroup/ci/cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    return Layout(2, {"": Hierarchy("/sys/fs/cgroup", "/", "/ci")})


def _read(path: str, name: str) -> str:
    return Path(path, name).read_text()


def test_v2_limits_are_written_and_controllers_enabled(v2: Layout) -> None:
    limits = Limits(memory=64 * MIB, pids=20, cpu_shares=1024, cpu_quota=50000,
                    cpuset_cpus="0-1")
    step = cgroups.create(limits, v2)
    assert step is not None and list(step.dirs) == [""]
    path = step.dirs[""]
    assert os.path.dirname(path) == "/sys/fs/cgroup/ci"
    assert os.path.basename(path).startswith("stepbuild-step@0badc0de.42.42-")
    assert _read("/sys/fs/cgroup/ci", "cgroup.subtree_control") == "+cpu +cpuset +memory +pids"
    assert _read(path, "memory.max") == str(64 * MIB)
    assert _read(path, "memory.swap.max") == str(64 * MIB)  # docker: swap = memory
    assert _read(path, "pids.max") == "21"  # 20 for the step, 1 for the sandbox's waiter
    assert _read(path, "cpu.weight") == "39"  # runc's conversion of 1024 shares
    assert _read(path, "cpu.max") == "50000 100000"
    assert _read(path, "cpuset.cpus") == "0-1"
    step.add(1234)
    assert _read(path, "cgroup.procs") == "1234"
    assert not step.oom_killed()
    Path(path, "memory.events").write_text("oom 1\noom_kill 1\n")
    assert step.oom_killed()
    step.remove()
    assert not os.path.exists(path)


def test_v2_unlimited_swap_and_no_limits(v2: Layout) -> None:
    step = cgroups.create(Limits(memory=64 * MIB, memory_swap=UNLIMITED), v2)
    assert step is not None and _read(step.dirs[""], "memory.swap.max") == "max"
    plain = cgroups.create(Limits(), v2)
    assert plain is not None and _read(plain.dirs[""], "memory.max") == ""  # untouched


def test_v2_missing_controller_is_a_clear_error(v2: Layout) -> None:
    Path("/sys/fs/cgroup/ci/cgroup.controllers").write_text("memory\n")
    with pytest.raises(SandboxError, match="pids limits"):
        cgroups.create(Limits(pids=5), v2)
    assert not [n for n in os.listdir("/sys/fs/cgroup/ci") if n.startswith("stepbuild")]


def test_v2_cgroup_parent_is_made_and_used(v2: Layout) -> None:
    step = cgroups.create(Limits(cgroup_parent="/builds"), v2)
    assert step is not None and os.path.dirname(step.dirs[""]) == "/sys/fs/cgroup/builds"


def test_dead_builders_cgroups_are_reaped_live_ones_kept(v2: Layout) -> None:
    dead = "/sys/fs/cgroup/ci/stepbuild-step@0badc0de.13.13-aa"
    alive = "/sys/fs/cgroup/ci/stepbuild-step@0badc0de.14.14-bb"
    os.mkdir(dead)
    os.mkdir(alive)
    cgroups.create(Limits(), v2)
    assert not os.path.exists(dead) and os.path.exists(alive)


def test_without_cgroups_limits_fail_and_unlimited_steps_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "host_layout", lambda: None)
    assert cgroups.create(Limits()) is None
    with pytest.raises(SandboxError, match="no cgroup hierarchy"):
        cgroups.create(Limits(memory=64 * MIB))


def test_cgroup_parent_outside_the_mounted_part_is_refused(v2: Layout) -> None:
    namespaced = Layout(2, {"": Hierarchy("/sys/fs/cgroup", "/docker/abc", "/docker/abc")})
    with pytest.raises(SandboxError, match="outside the part of the cgroup tree"):
        cgroups.create(Limits(cgroup_parent="/elsewhere"), namespaced)
