"""Resource limits for real, on this machine's cgroup v1 (issue 12): each step's cgroup, its
limits, the OOM report, ulimits, /dev/shm, --add-host, and the reaping of a killed builder's
cgroup. cgroup v2: its control files against a faked cgroupfs in tests/unit/sandbox, and the
step cgroup's life (made, joined, cgroup.kill, removed, reaped; a limit the tree has no
controller for refused) on the real unified tree at the end of this module."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stepbuild.errors import SandboxError
from stepbuild.fs.owner import owner_tag
from stepbuild.sandbox import RunResult, SandboxSpec, cgroups, host, run
from stepbuild.sandbox.limits import MIB, Limits, Ulimit

from .builds import PROJECT, Stepbuild, store_with_base

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("private_mount_ns")]
UNLIMITED = Limits()


def _layout() -> cgroups.Layout:
    layout = cgroups.host_layout()
    if layout is None:
        pytest.fail("no cgroup hierarchy is mounted: limits cannot be tested here")
    return layout


def _step_cgroups(layout: cgroups.Layout) -> set[str]:
    """Every step cgroup under the builder's own (in each v1 controller, or the v2 tree)."""
    found = set()
    for hierarchy in layout.hierarchies.values():
        base = hierarchy.directory(hierarchy.own_path)
        found |= {os.path.join(base, n) for n in os.listdir(base)
                  if n.startswith(cgroups.PREFIX)}
    return found


@dataclass(frozen=True)
class Step:
    merged: Path
    etc: Path

    def sh(self, script: str, limits: Limits = UNLIMITED) -> tuple[RunResult, str]:
        chunks: list[bytes] = []
        spec = SandboxSpec(rootfs=str(self.merged), argv=("sh", "-c", script),
                           env=("PATH=/bin",), cwd="/", etc_dir=str(self.etc), limits=limits)
        result = run(spec, on_output=chunks.append)
        return result, b"".join(chunks).decode()


@pytest.fixture
def step(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Step]:
    (tmp_path / "etc").mkdir()
    for name in ("hosts", "resolv.conf", "hostname"):
        (tmp_path / "etc" / name).write_text("")
    with host.mounted(tmp_path, [busybox_rootfs]) as merged:
        yield Step(merged, tmp_path / "etc")


def test_step_runs_in_its_own_cgroup_removed_afterwards(step: Step) -> None:
    layout = _layout()
    before = _step_cgroups(layout)
    result, out = step.sh("cat /proc/self/cgroup")
    assert result.exit_code == 0
    if layout.version == 1:  # memory always; pids only when limited (one migration less)
        memory = next(line for line in out.splitlines() if ":memory:" in line)
        pids = next(line for line in out.splitlines() if ":pids:" in line)
        assert f"/{cgroups.PREFIX}@" in memory and f"/{cgroups.PREFIX}@" not in pids
        _, out = step.sh("cat /proc/self/cgroup", Limits(pids=100))
        pids = next(line for line in out.splitlines() if ":pids:" in line)
        assert f"/{cgroups.PREFIX}@" in pids
    else:
        assert f"0::/{cgroups.PREFIX}@" in out or f"/{cgroups.PREFIX}@" in out
    assert _step_cgroups(layout) == before


def test_memory_limit_is_set_and_an_oom_kill_is_reported(step: Step) -> None:
    limits = Limits(memory=32 * MIB)
    result, out = step.sh("echo small", limits)
    assert result.exit_code == 0 and not result.oom_killed
    # 64 MiB of shell variable: far over a 32 MiB limit (there is no swap here)
    result, out = step.sh('x=$(head -c 67108864 /dev/zero | tr "\\0" a); echo ${#x}', limits)
    assert result.oom_killed
    assert result.exit_code != 0


def test_unlimited_step_is_not_an_oom_kill(step: Step) -> None:
    result, _ = step.sh('x=$(head -c 67108864 /dev/zero | tr "\\0" a); echo ${#x}')
    assert result.exit_code == 0 and not result.oom_killed


def test_pids_limit_makes_forks_fail_not_hang(step: Step) -> None:
    # busybox sh stops at a failed fork (bash would retry it); a bounded loop under
    # `timeout` cannot hang the test either way
    script = ("timeout 20 sh -c 'i=0; while [ $i -lt 50 ]; do sleep 5 & i=$((i+1));"
              " echo $i; done'; echo status $?")
    result, out = step.sh(script, Limits(pids=10))
    started = [line for line in out.splitlines() if line.isdigit()]
    assert len(started) < 10, out
    assert "status 0" not in out and "can't fork" in out
    result, out = step.sh(script)
    assert [line for line in out.splitlines() if line.isdigit()][-1] == "50"


def test_cpu_and_cpuset_limits_land_in_the_step_cgroup(step: Step) -> None:
    limits = Limits(cpu_shares=512, cpu_period=50000, cpu_quota=25000, cpuset_cpus="0")
    result, out = step.sh("cat /proc/self/status | grep Cpus_allowed_list", limits)
    assert result.exit_code == 0
    assert out.split()[-1] == "0"


def test_ulimit_nofile_is_set_before_the_command(step: Step) -> None:
    result, out = step.sh("ulimit -n; ulimit -Hn",
                          Limits(ulimits=(Ulimit("nofile", 64, 64),)))
    assert result.exit_code == 0
    assert out.split() == ["64", "64"]


def test_shm_size(step: Step) -> None:
    result, out = step.sh("df -k /dev/shm | tail -1", Limits(shm_size=8 * MIB))
    assert result.exit_code == 0
    assert out.split()[1] == "8192"
    result, out = step.sh("df -k /dev/shm | tail -1")
    assert out.split()[1] == "65536"  # docker's default


# -- through the CLI ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Stepbuild:
    return store_with_base(tmp_path_factory.mktemp("limits"), "store")


def _context(tmp_path: Path, stepfile: str) -> Path:
    (tmp_path / "ctx").mkdir(parents=True)
    (tmp_path / "ctx" / "Stepfile").write_text(stepfile)
    return tmp_path / "ctx"


def test_build_oom_is_reported_with_the_limit(sb: Stepbuild, tmp_path: Path) -> None:
    context = _context(tmp_path, "FROM base\nRUN echo fine\n"
                       'RUN x=$(head -c 134217728 /dev/zero | tr "\\0" a); echo ${#x}\n')
    result = sb.build(context, "--memory", "64m", "--no-cache", check=False)
    assert result.returncode == 1
    assert "Stepfile:3: RUN killed: out of memory (limit 64 MiB)" in result.stderr
    assert "Traceback" not in result.stderr


def test_build_ulimit_add_host_and_shm_size(sb: Stepbuild, tmp_path: Path) -> None:
    context = _context(tmp_path, "FROM base\nRUN ulimit -n > /n; cat /etc/hosts > /h;"
                       " df -k /dev/shm | tail -1 > /shm\n")
    sb.build(context, "-t", "flags", "--ulimit", "nofile=64:64", "--add-host",
             "registry.test:192.0.2.7", "--shm-size", "16m")
    assert sb.run("flags", "cat", "/n").split() == ["64"]
    assert "192.0.2.7\tregistry.test" in sb.run("flags", "cat", "/h")
    assert sb.run("flags", "cat", "/shm").split()[1] == "16384"


def test_run_gets_the_limits_too(sb: Stepbuild) -> None:
    out = sb("run", "--ulimit", "nofile=32:32", "--add-host", "db:192.0.2.9", "base",
             "sh", "-c", "ulimit -n; grep db /etc/hosts").stdout
    assert out.split() == ["32", "192.0.2.9", "db"]
    oom = sb("run", "--memory", "16m", "base", "sh", "-c",
             'x=$(head -c 67108864 /dev/zero | tr "\\0" a)', check=False)
    assert oom.returncode == 137  # as docker run's
    assert "killed: out of memory (limit 16 MiB)" in oom.stderr


def test_bad_limit_flags_are_usage_errors(sb: Stepbuild, tmp_path: Path) -> None:
    context = _context(tmp_path, "FROM base\nRUN true\n")
    for flags in (("--memory", "lots"), ("--ulimit", "nofile=64:32"),
                  ("--add-host", "db"), ("--memory", "64m", "--memory-swap", "32m")):
        result = sb.build(context, *flags, check=False)
        assert result.returncode == 2, flags
        assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_killed_builder_leaves_a_cgroup_the_next_build_reaps(sb: Stepbuild,
                                                            tmp_path: Path) -> None:
    layout = _layout()
    before = _step_cgroups(layout)
    context = _context(tmp_path, "FROM base\nRUN touch /started; sleep 300\n")
    env = {**os.environ, "STEPBUILD_ROOT": str(sb.root), "PYTHONPATH": str(PROJECT)}
    builder = subprocess.Popen([sys.executable, "-m", "stepbuild", "build", "--no-cache",
                                "--pids-limit", "50", str(context)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _step_cgroups(layout) - before:
            assert builder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        builder.send_signal(signal.SIGKILL)
        builder.wait()
    left = _step_cgroups(layout) - before
    assert left  # the kill -9 left the step's cgroups ...
    deadline = time.monotonic() + 10  # ... and nothing of the step in them (PDEATHSIG)
    while any(Path(path, "cgroup.procs").read_text() for path in left):
        assert time.monotonic() < deadline, "a process of the step outlived the builder"
        time.sleep(0.05)
    sb.build(_context(tmp_path / "next", "FROM base\nRUN true\n"), "--no-cache")
    assert not any(os.path.exists(path) for path in left)


def test_limit_the_kernel_refuses_is_one_clear_error_and_leaves_no_cgroup(
        sb: Stepbuild, tmp_path: Path) -> None:
    layout = _layout()
    before = _step_cgroups(layout)
    context = _context(tmp_path, "FROM base\nRUN true\n")
    result = sb.build(context, "--no-cache", "--cpuset-cpus", "4095", check=False)
    assert result.returncode == 1
    assert "stepbuild: error: sandbox: cannot apply the resource limits" in result.stderr
    assert "Traceback" not in result.stderr
    assert _step_cgroups(layout) == before


# cgroup v2 for real. This machine keeps memory, pids and cpu on v1, but its unified tree
# (cgroup2 at /sys/fs/cgroup/unified) is real: the step's cgroup is made, joined, killed with
# cgroup.kill and removed there, and a limit whose controller the tree lacks is refused. On a
# v2 host with the controllers (most CI hosts), the same tests apply the limits for real.


def _v2_layout() -> cgroups.Layout:
    """The host's cgroup2 tree as the only hierarchy, as a pure v2 host has it."""
    with open("/proc/self/mountinfo") as mountinfo, open("/proc/self/cgroup") as own:
        v2_only = "\n".join(line for line in mountinfo.read().splitlines()
                            if " - cgroup " not in line)
        layout = cgroups.detect(v2_only, own.read())
    if layout is None:
        pytest.fail("no cgroup2 tree is mounted: cgroup v2 cannot be tested here")
    return layout


@pytest.fixture
def v2(monkeypatch: pytest.MonkeyPatch) -> cgroups.Hierarchy:
    layout = _v2_layout()
    monkeypatch.setattr(cgroups, "host_layout", lambda: layout)
    return layout.hierarchies[""]


def _v2_controllers(hierarchy: cgroups.Hierarchy) -> set[str]:
    base = hierarchy.directory(hierarchy.own_path)
    return set(Path(base, "cgroup.controllers").read_text().split())


def test_v2_step_runs_in_its_own_cgroup_removed_afterwards(step: Step,
                                                           v2: cgroups.Hierarchy) -> None:
    layout = _v2_layout()
    before = _step_cgroups(layout)
    result, out = step.sh("cat /proc/self/cgroup")
    assert result.exit_code == 0
    unified = next(line for line in out.splitlines() if line.startswith("0::"))
    assert f"/{cgroups.PREFIX}@" in unified, out
    assert _step_cgroups(layout) == before


def test_v2_pids_limit_applies_or_is_refused_naming_the_controller(
        step: Step, v2: cgroups.Hierarchy) -> None:
    script = ("timeout 20 sh -c 'i=0; while [ $i -lt 50 ]; do sleep 5 & i=$((i+1));"
              " echo $i; done'; echo status $?")
    if "pids" in _v2_controllers(v2):
        result, out = step.sh(script, Limits(pids=10))
        assert len([line for line in out.splitlines() if line.isdigit()]) < 10, out
        assert "can't fork" in out
    else:  # this machine: pids is bound to v1, so the v2 tree cannot limit it
        with pytest.raises(SandboxError) as refused:
            step.sh(script, Limits(pids=10))
        assert "cannot apply the pids limits: the cgroup v2 controllers are not available" \
            in refused.value.message
    assert _step_cgroups(_v2_layout()) == set()


def test_v2_dead_builders_cgroup_is_killed_with_cgroup_kill_and_removed(
        step: Step, v2: cgroups.Hierarchy) -> None:
    """A cgroup left by a builder that died, with a process still in it, is reaped by the
    next step: cgroup.kill ends the process, then the directory goes."""
    base = v2.directory(v2.own_path)
    machine, pid, start = owner_tag()[1:].rsplit(".", 2)  # our pid, another start: dead
    leftover = Path(base, f"{cgroups.PREFIX}@{machine}.{pid}.{int(start) + 1}-deadbeef")
    leftover.mkdir()
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        (leftover / "cgroup.procs").write_text(str(sleeper.pid))
        result, _ = step.sh("true")
        assert result.exit_code == 0
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert not leftover.exists()
    finally:
        sleeper.kill()
        if leftover.exists():
            cgroups.destroy(str(leftover))
