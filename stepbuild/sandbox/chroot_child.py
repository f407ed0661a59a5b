"""The sandbox child of `--isolation=chroot`: no namespace, no mount; chroot(2) into the step's
copy of its root, with what confinement a process without CAP_SYS_ADMIN can still set up.

`sandbox.run` starts it as it starts `child.py` (same fds, same plan from
`spec.child_payload`, same status records: `N` notice, `E` setup failed, `R` about to
execve). It:

1. becomes a child subreaper and forks: the grandchild is the step; this process waits for
   it, then SIGKILLs and reaps whatever the step left running (there is no PID namespace
   whose end would take it along, and a daemon holding the output pipe would hold the build),
   and exits with the step's status (128+N when killed by signal N);
2. in the grandchild: chroot into the rootfs and chdir "/", create cwd, set the ulimits,
   load the seccomp filter — with no_new_privs when it cannot be loaded without (no
   CAP_SYS_ADMIN: seccomp(2)), so setuid programs gain nothing then —, cut the bounding set
   to Docker's set without CAP_SYS_CHROOT and CAP_MKNOD (`spec.CHROOT_DROPPED`), switch ids,
   keep only capabilities this process has, enter cwd, mark every fd above 2
   close-on-exec, and execve.

What it cannot do is docs/security.md's "chroot isolation": no /proc, no devices, the
host's network, PIDs and hostname, no mount of anything.
"""

from __future__ import annotations

import errno
import marshal
import os
import sys

if __package__:
    from . import child, linux  # noqa: TID251 -- the sandbox child is linux.py's other user
else:  # top-level, as sandbox.run imports it
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import child  # type: ignore[import-not-found, no-redef]
    import linux  # type: ignore[import-not-found, no-redef]

TYPE_CHECKING = False  # as in child.py: importing typing costs ~7 ms
if TYPE_CHECKING:
    from typing import NoReturn

    from .child import Plan

SIGKILL = 9


def main(builder_pid: int) -> NoReturn:
    linux.set_pdeathsig(SIGKILL)
    if os.getppid() != builder_pid:  # the builder died before the line above took effect
        os._exit(1)
    with open(child.PLAN_FD, "rb") as f:
        plan = marshal.load(f)
    try:
        linux.set_child_subreaper()
        lifeline, keep_alive = os.pipe()
        pid = os.fork()
    except OSError as e:
        child.fail("start the step", e.errno or 0)
    if pid == 0:
        os.close(keep_alive)
        step(plan, lifeline)
    os.close(lifeline)
    os.close(child.STATUS_FD)  # the grandchild's copy alone must keep it open, until its execve
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    reap_leftovers()
    os._exit(code if code >= 0 else 128 - code)


def reap_leftovers() -> None:
    """Kill and reap every process the step left behind: as our descendants orphaned, they
    became our children (PR_SET_CHILD_SUBREAPER). Until none is left: each killed one's own
    children come to us in turn."""
    while True:
        for pid in _children():
            try:  # noqa: SIM105 -- contextlib would cost the child an import
                os.kill(pid, SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _children() -> list[int]:
    """Our children's pids (proc(5), /proc/PID/task/TID/children; we have one thread)."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children", "rb") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def step(plan: Plan, lifeline: int) -> NoReturn:
    """The step's process: set up, then execve. Never returns."""
    try:
        child.begin_step(plan, lifeline)
        held = permitted_capabilities()
        enter_root(plan["rootfs"])
        child.make_workdir(plan["cwd"])
        child.set_ulimits(plan["rlimits"])
        confine(plan.get("seccomp"))
        child.become_user(plan, plan["capabilities"] & held)
        child.enter_workdir(plan["cwd"])
    except child.SetupFailed as e:
        child.fail(e.op, e.errno)
    except OSError as e:
        child.fail(child.failed_op("sandbox setup", e), e.errno or 0)
    except BaseException as e:  # a bug here: report it rather than print into the output
        child.fail(f"sandbox setup: {type(e).__name__}: {e}", 0)
    child.execute(plan["argv"], plan["env"])


def permitted_capabilities() -> int:
    """CapPrm of this process: the step can keep no capability we do not have (an
    unprivileged container gives fewer than Docker's set)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"CapPrm:"):
                return int(line.split()[1], 16)
    return 0


def enter_root(rootfs: str) -> None:
    try:
        os.chroot(rootfs)
        os.chdir("/")
    except OSError as e:
        raise child.SetupFailed(f"chroot {rootfs}", e.errno or 0) from None


def confine(program: bytes | None) -> None:
    """Load the step's seccomp filter (None: unconfined). Without CAP_SYS_ADMIN the kernel
    takes a filter only from a process with no_new_privs (seccomp(2), EACCES): set it then."""
    if not program:
        return
    try:
        linux.load_seccomp_filter(program)
        return
    except OSError as e:
        if e.errno != errno.EACCES:
            raise child.SetupFailed("load the seccomp filter", e.errno or 0) from None
    try:
        linux.set_no_new_privs()
        linux.load_seccomp_filter(program)
    except OSError as e:
        raise child.SetupFailed("load the seccomp filter", e.errno or 0) from None
