"""A build's sandbox pool (sandbox/pool.py) for real: the next step's child is made ahead, in
a cgroup of its own, and used by the next step; parallel steps each get theirs; `close`
leaves no child and no cgroup; a spare that cannot be made costs nothing but the time."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepbuild.errors import SandboxError
from stepbuild.sandbox import SandboxSpec, cgroups, host
from stepbuild.sandbox.limits import Limits
from stepbuild.sandbox.pool import Pool

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("private_mount_ns")]


def _step_cgroups() -> set[str]:
    layout = cgroups.host_layout()
    assert layout is not None, "no cgroup hierarchy is mounted"
    found = set()
    for hierarchy in layout.hierarchies.values():
        base = hierarchy.directory(hierarchy.own_path)
        found |= {os.path.join(base, n) for n in os.listdir(base) if n.startswith(cgroups.PREFIX)}
    return found


@pytest.fixture
def merged(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Path]:
    with host.mounted(tmp_path, [busybox_rootfs]) as root:
        yield root


UNLIMITED = Limits()


def _spec(merged: Path, script: str, limits: Limits = UNLIMITED) -> SandboxSpec:
    return SandboxSpec(rootfs=str(merged), argv=("sh", "-c", script), env=("PATH=/bin",),
                       cwd="/", network="host", seccomp="unconfined", limits=limits)


def _run(pool: Pool, spec: SandboxSpec) -> tuple[int, str]:
    chunks: list[bytes] = []
    result = pool.run(spec, on_output=chunks.append)
    return result.exit_code, b"".join(chunks).decode()


def _memory_cgroup(out: str) -> str:
    return next(line for line in out.splitlines() if ":memory:" in line or line.startswith("0::"))


def test_the_next_step_gets_the_child_made_while_the_step_before_ran(merged: Path) -> None:
    before = _step_cgroups()
    pool = Pool()
    try:
        code, first = _run(pool, _spec(merged, "cat /proc/self/cgroup"))
        assert code == 0
        pool.settle()  # the spare was being made while the step ran
        [spare] = pool._spares.values()
        assert spare.cgroup is not None
        spare_dirs = set(spare.cgroup.dirs.values())
        assert spare_dirs <= _step_cgroups() - before  # made ahead, already there
        code, second = _run(pool, _spec(merged, "cat /proc/self/cgroup"))
        assert code == 0
        assert _memory_cgroup(second) != _memory_cgroup(first)
        assert any(os.path.basename(d) in _memory_cgroup(second) for d in spare_dirs)
    finally:
        pool.close()
    assert _step_cgroups() == before  # every step's, and the last spare's, removed


def test_parallel_steps_each_get_their_own_child(merged: Path) -> None:
    results: dict[int, tuple[int, str]] = {}
    pool = Pool()

    def step(n: int) -> None:
        results[n] = _run(pool, _spec(merged, f"sleep 0.1; echo {n}; exit {n}"))

    try:
        threads = [threading.Thread(target=step, args=(n,)) for n in range(1, 6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        pool.close()
    assert results == {n: (n, f"{n}\n") for n in range(1, 6)}


def test_close_ends_the_spare_and_is_idempotent(merged: Path) -> None:
    before = _step_cgroups()
    pool = Pool()
    _run(pool, _spec(merged, "true"))
    pool.close()
    pool.close()
    assert pool._spares == {}
    assert _step_cgroups() == before


def test_limits_the_kernel_refuses_fail_the_step_not_the_spare_maker(merged: Path) -> None:
    """The maker's failure is silent (the step that needs a child makes its own); the step
    reports it as sandbox.run does, and nothing is left."""
    before = _step_cgroups()
    pool = Pool()
    try:
        with pytest.raises(SandboxError, match="cannot apply the resource limits"):
            pool.run(_spec(merged, "true", Limits(cpuset_cpus="4095")))
        with pytest.raises(SandboxError, match="cannot apply the resource limits"):
            pool.run(_spec(merged, "true", Limits(cpuset_cpus="4095")))
        assert _run(pool, _spec(merged, "echo fine")) == (0, "fine\n")
    finally:
        pool.close()
    assert _step_cgroups() == before
