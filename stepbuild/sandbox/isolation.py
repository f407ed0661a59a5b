"""Which isolation this process can give RUN steps, and why not a stronger one.

Modes, strongest first:

- `namespaces`: root with CAP_SYS_ADMIN (the host, a privileged container). The builder
  makes its own mount namespace, mounts overlays, and each step gets new mount, PID, UTS,
  IPC and network namespaces and `pivot_root` (`host.py`, `child.py`).
- `userns`: the same, from inside a user namespace of the builder's own, whose root holds
  CAP_SYS_ADMIN over what that namespace owns (`userns.py`). A normal user gets it mapped
  from /etc/subuid through newuidmap (rootless); root without CAP_SYS_ADMIN (an
  unprivileged container's default pod, where the runtime's seccomp profile still allows
  user namespaces) maps every id it has to itself, with no helper (`idmap.identity_maps`).

A mode needing no namespace at all (chroot) would slot in after `userns`: one more name in
`MODES` and its condition in `_unavailable`.

`probe` looks at this process (its euid, CapEff in /proc/self/status, and only where it
decides anything, unshare(CLONE_NEWUSER) tried in a throwaway child); `choose` is the pure
decision, unit-tested on made-up environments. Both run before the command does anything,
in the process that may then enter the user namespace (`cli/rootless.py`).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from stepbuild.errors import IsolationUnavailable

__all__ = ["MODES", "NAMESPACES", "USERNS", "Environment", "Isolation", "choose", "probe"]

NAMESPACES, USERNS = "namespaces", "userns"
MODES = (NAMESPACES, USERNS)  # strongest first

CAP_SYS_ADMIN = 21
_STATUS = "/proc/self/status"
NONE_HINT = ("run the container with a seccomp profile that allows user namespaces (podman's"
             " and docker's default profiles do), or with CAP_SYS_ADMIN (--privileged)")


@dataclass(frozen=True, slots=True)
class Environment:
    """What the probes found: the effective uid, the effective capability mask, and the errno
    unshare(CLONE_NEWUSER) failed with in a throwaway child (None: it worked, or was not
    tried because nothing depends on it)."""

    euid: int
    effective: int
    userns_errno: int | None = None

    @property
    def root(self) -> bool:
        return self.euid == 0


@dataclass(frozen=True, slots=True)
class Isolation:
    """The mode chosen; for `userns`, whether as root (an identity map) or as a normal user
    (rootless, subordinate ids); and for each stronger mode the reason it was not (`-v`)."""

    mode: str
    as_root: bool = True
    passed_over: tuple[str, ...] = ()

    def describe(self) -> str:
        """The build's first line."""
        if self.mode != USERNS:
            return f"isolation: {self.mode}"
        how = ("root without CAP_SYS_ADMIN, every id mapped to itself" if self.as_root
               else "rootless, ids from /etc/subuid")
        return f"isolation: {self.mode} ({how})"


def choose(env: Environment) -> Isolation:
    """The strongest mode `env` allows; IsolationUnavailable, naming what each one is
    missing, when there is none."""
    passed_over: list[str] = []
    for mode in MODES:
        reason = _unavailable(mode, env)
        if reason is None:
            return Isolation(mode, env.root, tuple(passed_over))
        passed_over.append(f"{mode} unavailable: {reason}")
    raise IsolationUnavailable("no isolation for RUN steps is possible here: "
                               + "; ".join(passed_over).replace(" unavailable", ""),
                               hint=NONE_HINT)


def _unavailable(mode: str, env: Environment) -> str | None:
    """Why `mode` cannot run in `env`, or None."""
    if mode == NAMESPACES:
        if not env.root:
            return "not root"
        if not env.effective & (1 << CAP_SYS_ADMIN):
            return ("no CAP_SYS_ADMIN (an unprivileged container?), so no mount namespace"
                    " of the builder's own")
        return None
    if env.userns_errno is not None:
        name = errno.errorcode.get(env.userns_errno, str(env.userns_errno))
        return (f"user namespaces are refused (unshare(CLONE_NEWUSER): {name}; a seccomp"
                f" profile, or sysctl user.max_user_namespaces)")
    return None


def probe() -> Environment:
    """This process's environment. The user namespace probe (a fork, a few ms) runs only for
    root without CAP_SYS_ADMIN: with the capability it is not needed, and a normal user's
    `userns.enter` reports its own failure."""
    euid = os.geteuid()
    effective = _effective_capabilities()
    if euid != 0 or effective & (1 << CAP_SYS_ADMIN):
        return Environment(euid, effective)
    return Environment(euid, effective, _userns_errno())


def _effective_capabilities(path: str = _STATUS) -> int:
    """CapEff of this process (proc(5)); 0 where /proc cannot tell."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _userns_errno() -> int | None:
    """unshare(CLONE_NEWUSER) in a forked child, which exits with 0 or the errno: this
    process must not move yet (`userns.enter` does it, mapped, if this mode is chosen)."""
    from stepbuild.sandbox import linux  # noqa: TID251 -- sandbox/'s own probe

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            linux.unshare(linux.CLONE_NEWUSER)
        except OSError as exc:
            code = exc.errno or 255
        os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return None if code == 0 else abs(code)
