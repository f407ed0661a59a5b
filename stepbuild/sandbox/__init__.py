"""Run one step's command in a sandbox — the only privileged part of stepbuild.

`spec.py` describes a sandbox as data, `child.py` performs it in a child forked by the fork
server (`forkserver.py`, started by `spawn.py` once per builder), and
`linux.py` holds the syscalls (the only ctypes in the project; nothing outside `sandbox/`
imports it). `host.py` holds the mounts the builder process makes itself. This module is the
builder's side of a step: it starts the child, hands it the plan, streams the output and
returns the exit status.

Lifecycle, as the builder uses it::

    host.enter_private_mount_namespace()         # once, at start-up, before any thread
    with host.mounted(tmp, lowers) as merged:
        result = run(SandboxSpec(rootfs=str(merged), argv=("/bin/sh", "-c", cmd), env=env,
                                 cwd="/"), on_output=progress.write)
    # tmp/upper now holds the step's changes

Everything the child mounts lives in its own mount namespace and is gone when the command
(PID 1 of its PID namespace) exits; nothing is left to clean up, even after kill -9.
With `spec.isolation == "chroot"` the child is `chroot_child.py` instead: same contract, no
namespace (see `isolation.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import marshal
import os
import select
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stepbuild.errors import Cancelled, SandboxError
from stepbuild.sandbox.spawn import DEFAULT, Child, ForkServer

if TYPE_CHECKING:
    import threading

    from stepbuild.sandbox.cgroups import StepCgroup
    from stepbuild.sandbox.limits import Limits
    from stepbuild.sandbox.spec import Mount, SandboxSpec


def __getattr__(name: str) -> object:
    """`Mount` and `SandboxSpec` are spec.py's, imported once asked for: a module of this
    package (isolation.py, on a no-op rebuild's path) must not cost spec.py's imports."""
    if name in ("Mount", "SandboxSpec"):
        from stepbuild.sandbox import spec

        return getattr(spec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["Mount", "RunResult", "SandboxSpec", "run"]

_CHILDREN = {"namespaces": "child", "chroot": "chroot_child"}  # the fork server runs either
TAIL_LINES = 20
_TAIL_BYTES = 64 * 1024
CANCEL_POLL_MS = 100  # how long a cancelled step may run on before it is killed


@dataclass(frozen=True, slots=True)
class RunResult:
    """The command's exit status (128+N if killed by signal N), the last lines of its
    combined stdout and stderr, and setup notices worth showing in verbose output (a skipped
    /etc bind, the chroot fallback). `oom_killed`: the kernel's OOM killer killed a process of
    the step (its cgroup hit `spec.limits.memory`)."""

    exit_code: int
    output_tail: tuple[str, ...]
    notices: tuple[str, ...] = ()
    oom_killed: bool = False


def run(spec: SandboxSpec, on_output: Callable[[bytes], None] | None = None,
        cancel: threading.Event | None = None,
        ready: Callable[[str, Limits], ReadyChild] | None = None,
        retire: Callable[[StepCgroup], None] | None = None) -> RunResult:
    """Run `spec.argv` in a sandbox over `spec.rootfs`; return when it and all its
    descendants are gone (they share its PID namespace, which dies with it).

    Output (stdout and stderr, one pipe) goes to `on_output` chunk by chunk as it arrives;
    stdin is /dev/null. Raises SandboxError(op, errno) when the sandbox could not be set up or
    the command could not be executed (a missing program: op "exec NAME", errno ENOENT), and
    SeccompUnavailable when `spec.seccomp` asks for a filter that cannot be made; a
    command that runs and fails is an exit code, not an exception. The child is killed with
    SIGKILL if the builder exits (its fork server then kills it), if `on_output` raises, or once
    `cancel` is set (then `Cancelled` is raised): a failing build stops the steps still running.

    The step runs in a cgroup of its own with `spec.limits` applied (`cgroups.py`), removed
    on return. `ready` gives the child, already in that cgroup (default `ready_child`; a
    build's `pool.Pool` gives one it made while the step before ran), and `retire` removes
    the cgroup once the step is over (default `StepCgroup.remove`, at once; a pool's, soon
    after in a thread of its own).
    """
    from stepbuild.fs.userns import owner_mapped
    from stepbuild.sandbox.cgroups import StepCgroup
    from stepbuild.sandbox.seccomp import program
    from stepbuild.sandbox.spec import TTY_GID, child_payload

    plan = child_payload(spec, tty_gid=owner_mapped(0, TTY_GID))
    plan["seccomp"] = program(spec.seccomp)  # compiled once per profile; may refuse the step
    payload = marshal.dumps(plan)
    child = (ready or ready_child)(_CHILDREN[spec.isolation], spec.limits)
    try:
        return _run_ready(child, payload, on_output, cancel)
    finally:
        if child.cgroup is not None:
            (retire or StepCgroup.remove)(child.cgroup)


@dataclass(slots=True)
class ReadyChild:
    """A sandbox child forked and already in its step's cgroup, waiting for its plan, with
    the builder's ends of its three pipes. `discard` ends one that will not be used."""

    child: Child
    cgroup: StepCgroup | None
    plan_w: int
    status_r: int
    out_r: int

    def discard(self) -> None:
        os.close(self.plan_w)  # the child reads no plan, and exits
        self.child.kill()
        with contextlib.suppress(SandboxError):
            self.child.wait()
        for fd in (self.status_r, self.out_r):
            os.close(fd)
        if self.cgroup is not None:
            self.cgroup.remove()


def ready_child(module: str, limits: Limits, server: ForkServer | None = None) -> ReadyChild:
    """A new child running `module` (`child` or `chroot_child`) in a new cgroup with
    `limits`, forked by `server` (default `spawn.DEFAULT`): the one `run` uses unless given
    another way to get one (`pool.Pool`)."""
    from stepbuild.sandbox import cgroups

    cgroup = cgroups.create(limits)
    try:
        plan_r, plan_w = _pipe()
        status_r, status_w = _pipe()
        out_r, out_w = _pipe()
        try:
            child = (server or DEFAULT).start_child(module, plan_r, status_w, out_w)
        except BaseException:
            for fd in (plan_w, status_r, out_r):
                os.close(fd)
            raise
        finally:
            for fd in (plan_r, status_w, out_w):
                os.close(fd)
        ready = ReadyChild(child, cgroup, plan_w, status_r, out_r)
        if cgroup is not None:
            # before the plan: the child waits for it, so it execs nothing outside the cgroup
            _join(ready)
    except BaseException:
        if cgroup is not None:
            cgroup.remove()
        raise
    return ready


def _join(ready: ReadyChild) -> None:
    assert ready.cgroup is not None
    try:
        ready.cgroup.add(ready.child.pid)
    except BaseException:
        ready.cgroup = None  # ready_child removes it
        ready.discard()
        raise


def _run_ready(ready: ReadyChild, payload: bytes, on_output: Callable[[bytes], None] | None,
               cancel: threading.Event | None) -> RunResult:
    child = ready.child
    try:
        _send(ready.plan_w, payload)
        status = _read_all(ready.status_r)
        tail = _pump(ready.out_r, on_output, cancel)
        code = os.waitstatus_to_exitcode(child.wait())
    except BaseException:
        child.kill()
        with contextlib.suppress(SandboxError):  # the error on its way out says more
            child.wait()
        raise
    finally:
        for fd in (ready.status_r, ready.out_r):
            os.close(fd)
    oom = ready.cgroup is not None and ready.cgroup.oom_killed()
    return _result(128 - code if code < 0 else code, status, tail, oom)


def _pipe() -> tuple[int, int]:
    """A close-on-exec pipe whose ends are above fd 4, so the child's dup2s cannot clash."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5))
        os.close(fd)
    return ends[0], ends[1]


def _send(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        pass  # the child died early; its status says why
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _pump(fd: int, on_output: Callable[[bytes], None] | None,
          cancel: threading.Event | None) -> bytes:
    """Copy the output pipe to `on_output` until EOF; return the last 64 KiB of it. Raises
    `Cancelled` once `cancel` is set (looked at every CANCEL_POLL_MS while no output comes)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    tail = bytearray()
    while True:
        if cancel is not None:
            if cancel.is_set():
                raise Cancelled("stopped: the build failed elsewhere")
            if not poller.poll(CANCEL_POLL_MS):
                continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        if on_output is not None:
            on_output(chunk)
        tail += chunk
        del tail[:-_TAIL_BYTES]
    return bytes(tail)


def _result(code: int, status: bytes, tail: bytes, oom: bool = False) -> RunResult:
    """Read the status records (see child.py); raise SandboxError on a setup failure (one
    the OOM killer caused is reported as the OOM kill it is)."""
    notices, error, ready = [], None, False
    for line in status.decode(errors="replace").splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "N":
            notices.append(rest)
        elif kind == "E":
            errno, _, op = rest.partition("\t")
            error = (op, int(errno))
        elif kind == "R":
            ready = True
    lines = tuple(tail.decode(errors="replace").splitlines()[-TAIL_LINES:])
    if error is not None:
        raise SandboxError(*error)
    if not ready and not oom:
        last = f": {lines[-1]}" if lines else ""
        raise SandboxError(f"sandbox child died during setup (exit status {code}){last}", 0)
    return RunResult(code, lines, tuple(notices), oom)
