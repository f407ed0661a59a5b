"""Each step's cgroup: created with its limits, joined by the sandbox child, removed after.

A step's cgroup is named `stepbuild-step@<owner>-<random>` (the owner tag of `fs/owner.py`)
and nested under the builder's own cgroup, or under `--cgroup-parent`. `sandbox.run` creates
it, writes the child's pid into it before sending the plan (the child waits for the plan, so
nothing of the step runs outside it), asks `oom_killed` after the step and removes it. A
builder killed with SIGKILL leaves an empty cgroup behind (its step died with it: the fork
server kills its children when the builder is gone, and they have PDEATHSIG); the next step
created under the same parent reaps it.

Both layouts:

- cgroup v1, one hierarchy per controller (this project's CI machine: memory, pids, cpu,
  cpuset mounted apart): one directory per controller used. Memory always (to see an OOM kill
  and to find every task to kill), the others when limited. memory.limit_in_bytes
  goes before memory.memsw.limit_in_bytes (the kernel refuses memsw below memory); an OOM kill
  counts in memory.oom_control's `oom_kill`, not in memory.failcnt.
- cgroup v2, one tree: one directory; the controllers are enabled in the parent's
  cgroup.subtree_control; `cgroup.kill` ends the whole tree at once; memory.events counts OOM
  kills. The parent must hold no processes itself (v2's rule), so a builder that is not in
  the root cgroup needs `--cgroup-parent` to apply limits there.

Where no cgroup can be made (no hierarchy mounted, not root), a step without limits runs
without a cgroup of its own; one with limits fails with an error that says why: limits are
never silently dropped. Rootless builds need a delegated v2 subtree for the same reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stepbuild.errors import SandboxError
from stepbuild.fs.owner import is_dead_work, owner_tag

if TYPE_CHECKING:
    from stepbuild.sandbox.limits import Limits

PREFIX = "stepbuild-step"
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuset")
_REMOVE_TRIES = 50  # x 20 ms: how long an emptied cgroup may stay busy before we give up


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """Where one hierarchy is mounted, the cgroup path its mount shows as its root, and the
    builder's own cgroup path in it (paths as /proc/self/cgroup writes them)."""

    mount_point: str
    mount_root: str
    own_path: str

    def directory(self, cgroup_path: str) -> str:
        """The directory of `cgroup_path` (from the hierarchy's root) under the mount."""
        relative = os.path.relpath(cgroup_path, self.mount_root)
        return os.path.normpath(os.path.join(self.mount_point, relative))


@dataclass(frozen=True, slots=True)
class Layout:
    """The cgroup hierarchies of this process: version 1 (a Hierarchy per controller) or 2
    (`hierarchies[""]`, the unified tree)."""

    version: int
    hierarchies: dict[str, Hierarchy]


@dataclass(slots=True)
class StepCgroup:
    """One step's cgroup: a directory per v1 controller, or one v2 directory (key "")."""

    version: int
    dirs: dict[str, str] = field(default_factory=dict)

    def add(self, pid: int) -> None:
        for path in self.dirs.values():
            try:
                _write(path, "cgroup.procs", str(pid))
            except OSError as e:  # e.g. ENOSPC: a v1 cpuset with no cpus
                raise SandboxError(f"join the step's cgroup {path}", e.errno or 0) from None

    def oom_killed(self) -> bool:
        """True if the kernel's OOM killer killed a process of the step."""
        if self.version == 1:
            memory = self.dirs.get("memory")
            return memory is not None and _counter(memory, "memory.oom_control", "oom_kill") > 0
        return _counter(self.dirs[""], "memory.events", "oom_kill") > 0

    def remove(self) -> None:
        """Kill whatever is left in the cgroup and remove its directories."""
        for path in self.dirs.values():
            try:
                destroy(path)
            except OSError as e:  # still busy after a second: the next build reaps it
                raise SandboxError(f"remove the step's cgroup {path}", e.errno or 0) from None


def detect(mountinfo: str, own_cgroups: str) -> Layout | None:
    """The layout from the text of /proc/self/mountinfo and /proc/self/cgroup; v1 when any of
    V1_CONTROLLERS is mounted as v1 (hybrid hosts keep their controllers there), else v2 when
    a cgroup2 is mounted, else None."""
    own: dict[str, str] = {}
    for line in own_cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            own[name] = path
    v1: dict[str, Hierarchy] = {}
    v2: Hierarchy | None = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, super_fields = left.split(), right.split()
        if len(fields) < 5 or len(super_fields) < 3:
            continue
        root, mount_point, fstype = fields[3], fields[4], super_fields[0]
        if fstype == "cgroup":
            for name in super_fields[2].split(","):
                if name in V1_CONTROLLERS and name in own and name not in v1:
                    v1[name] = Hierarchy(mount_point, root, own[name])
        elif fstype == "cgroup2" and v2 is None and "" in own:
            v2 = Hierarchy(mount_point, root, own[""])
    if v1:
        return Layout(1, v1)
    return Layout(2, {"": v2}) if v2 is not None else None


def host_layout() -> Layout | None:
    try:
        with open("/proc/self/mountinfo") as mountinfo, open("/proc/self/cgroup") as own:
            return detect(mountinfo.read(), own.read())
    except OSError:
        return None


def create(limits: Limits, layout: Layout | None = None) -> StepCgroup | None:
    """A new cgroup for one step with `limits` applied; None when none can be made and none
    is needed. Raises SandboxError when limits were asked for and cannot be applied."""
    layout = layout if layout is not None else host_layout()
    needed = limits.cgroup_limited() or bool(limits.cgroup_parent)
    if layout is None:
        if needed:
            raise SandboxError("cannot apply the resource limits: no cgroup hierarchy is"
                               " mounted", 0)
        return None
    name = f"{PREFIX}{owner_tag()}-{os.urandom(4).hex()}"
    step = StepCgroup(layout.version)
    try:
        if layout.version == 1:
            _create_v1(step, layout, limits, name)
        else:
            _create_v2(step, layout.hierarchies[""], limits, name)
    except SandboxError:
        step.remove()
        raise
    except OSError as e:
        step.remove()
        if not needed:
            return None  # e.g. not root: an unlimited step runs as it did before cgroups
        raise SandboxError(f"cannot apply the resource limits: {e.filename}", e.errno or 0,
                           hint=_hint(e.errno)) from None
    return step


def _hint(err: int | None) -> str | None:
    if err in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "limits need write access to the cgroup tree (root, or a delegated subtree)"
    if err == errno.EBUSY:
        return "on cgroup v2, give --cgroup-parent a cgroup that holds no processes"
    return None


def _base(hierarchy: Hierarchy, limits: Limits, *, make: bool = True) -> str:
    """The directory the step's cgroup goes in: --cgroup-parent (made if missing, when
    `make`) or ours."""
    if not limits.cgroup_parent:
        return hierarchy.directory(hierarchy.own_path)
    base = hierarchy.directory("/" + limits.cgroup_parent.strip("/"))
    if os.path.commonpath([base, hierarchy.mount_point]) != hierarchy.mount_point:
        # a cgroup namespace or container shows only part of the tree
        raise SandboxError(f"--cgroup-parent {limits.cgroup_parent}: outside the part of the"
                           f" cgroup tree mounted at {hierarchy.mount_point}", 0)
    if make:
        os.makedirs(base, exist_ok=True)
    return base


def _create_v1(step: StepCgroup, layout: Layout, limits: Limits, name: str) -> None:
    limited = {"memory": limits.memory is not None, "pids": limits.pids is not None,
               "cpu": any(v is not None for v in (limits.cpu_shares, limits.cpu_quota,
                                                  limits.cpu_period)),
               "cpuset": bool(limits.cpuset_cpus)}
    if missing := [c for c, wanted in limited.items() if wanted and c not in layout.hierarchies]:
        raise SandboxError(f"cannot apply the {', '.join(missing)} limits: no such cgroup v1"
                           " controller is mounted", 0)
    # One always, limited or not: memory (to see an OOM kill), else pids; its tasks are every
    # task of the step, for `destroy` to kill. Only one, because each v1 hierarchy joined
    # costs a task migration, ~2.5 ms on every step here (cgroup_threadgroup_rwsem's RCU wait).
    always = "memory" if "memory" in layout.hierarchies else "pids"
    for controller, hierarchy in layout.hierarchies.items():
        if not (limited[controller] or controller == always):
            reap(_base(hierarchy, limits, make=False))  # a dead builder's limited step's
            continue
        base = _base(hierarchy, limits)
        reap(base)
        path = os.path.join(base, name)
        os.mkdir(path)
        step.dirs[controller] = path
        _configure_v1(controller, path, base, limits)


def _configure_v1(controller: str, path: str, base: str, limits: Limits) -> None:
    if controller == "memory" and limits.memory is not None:
        _write(path, "memory.limit_in_bytes", str(limits.memory))  # before memsw: see above
        total = limits.swap_total()
        if total is not None and os.path.exists(os.path.join(path, "memory.memsw.limit_in_bytes")):
            _write(path, "memory.memsw.limit_in_bytes", str(total))
    elif controller == "pids" and limits.pids is not None:
        _write(path, "pids.max", str(limits.pids + 1))  # + the sandbox's waiting process
    elif controller == "cpu":
        if limits.cpu_shares is not None:
            _write(path, "cpu.shares", str(limits.cpu_shares))
        if limits.cpu_period is not None:  # before the quota, which is checked against it
            _write(path, "cpu.cfs_period_us", str(limits.cpu_period))
        if limits.cpu_quota is not None:
            _write(path, "cpu.cfs_quota_us", str(limits.cpu_quota))
    elif controller == "cpuset":
        # A new v1 cpuset has no cpus and no mems: no task may join it until both are set.
        _write(path, "cpuset.mems", _read(base, "cpuset.mems"))
        _write(path, "cpuset.cpus", limits.cpuset_cpus)


def _create_v2(step: StepCgroup, hierarchy: Hierarchy, limits: Limits, name: str) -> None:
    base = _base(hierarchy, limits)
    reap(base)
    settings = _v2_settings(limits)
    controllers = sorted({key.partition(".")[0] for key in settings} | {"memory", "pids"})
    available = set(_read(base, "cgroup.controllers").split())
    if missing := [c for c in controllers if c not in available and
                   any(key.startswith(c + ".") for key in settings)]:
        raise SandboxError(f"cannot apply the {', '.join(missing)} limits: the cgroup v2"
                           f" controllers are not available in {base}", 0)
    enable = " ".join(f"+{c}" for c in controllers if c in available)
    if enable:
        try:
            _write(base, "cgroup.subtree_control", enable)
        except OSError:
            if settings:
                raise
            # an unlimited step does without controllers: its cgroup still kills its tree
    path = os.path.join(base, name)
    os.mkdir(path)
    step.dirs[""] = path
    for key, value in settings.items():
        _write(path, key, value)


def _v2_settings(limits: Limits) -> dict[str, str]:
    """The v2 control files and values for `limits`, in the order they must be written."""
    settings = {}
    if limits.memory is not None:
        settings["memory.max"] = str(limits.memory)
        total = limits.swap_total()
        settings["memory.swap.max"] = "max" if total is None else str(total - limits.memory)
    if limits.pids is not None:
        settings["pids.max"] = str(limits.pids + 1)  # + the sandbox's waiting process
    if limits.cpu_shares is not None:
        # runc's conversion of cpu.shares [2, 262144] to cpu.weight [1, 10000]
        settings["cpu.weight"] = str(1 + (limits.cpu_shares - 2) * 9999 // 262142)
    if limits.cpu_quota is not None or limits.cpu_period is not None:
        quota = "max" if limits.cpu_quota is None else str(limits.cpu_quota)
        settings["cpu.max"] = f"{quota} {limits.cpu_period or 100000}"
    if limits.cpuset_cpus:
        settings["cpuset.cpus"] = limits.cpuset_cpus
    return settings


def reap(base: str) -> None:
    """Remove the step cgroups under `base` whose builder has died (see fs/owner.py)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if name.startswith(PREFIX + "@") and is_dead_work(name):
            # OSError: another builder reaps it at the same time, or it is still busy: later
            with contextlib.suppress(OSError):
                destroy(os.path.join(base, name))


def destroy(path: str) -> None:
    """Kill every task of the cgroup at `path` and remove it (gone already is fine)."""
    if os.path.exists(os.path.join(path, "cgroup.kill")):
        _write(path, "cgroup.kill", "1")
    for attempt in range(_REMOVE_TRIES):
        try:
            pids = _read(path, "cgroup.procs").split()
        except FileNotFoundError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:  # EBUSY: a killed task has not exited yet
            if e.errno != errno.EBUSY or attempt == _REMOVE_TRIES - 1:
                raise
        time.sleep(0.02)


def _counter(path: str, filename: str, key: str) -> int:
    """The value of `key` in a flat-keyed cgroup file (`key value` lines); 0 if absent."""
    try:
        text = _read(path, filename)
    except FileNotFoundError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _read(path: str, filename: str) -> str:
    with open(os.path.join(path, filename)) as f:
        return f.read().strip()


def _write(path: str, filename: str, value: str) -> None:
    # One write(2) per value: cgroupfs takes each write as one command.
    fd = os.open(os.path.join(path, filename), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
