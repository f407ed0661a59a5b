"""Which isolation RUN steps (and `stepbuild run`) get here, and why not a stronger one.

Modes, strongest first:

- `namespaces`: new mount, PID, UTS, IPC and network namespaces, an overlay of the layers,
  `pivot_root` (`child.py`). Needs CAP_SYS_ADMIN and a kernel that lets us unshare.
- `chroot`: no namespace and no mount at all; the step runs `chroot`ed into a plain copy of
  its root and its layer comes from comparing the tree before and after
  (`chroot_child.py`, `layers/treediff.py`). Needs CAP_SYS_CHROOT only: what an unprivileged
  container whose seccomp profile also denies user namespaces still gives root. Much weaker
  (docs/security.md, "chroot isolation").

`--isolation=auto` (the default) takes the first mode of `MODES` the probes allow; asking for
one by name takes it or refuses with one line naming what is missing. `probe` looks at this
process (CapEff in /proc/self/status; unshare(CLONE_NEWNS) tried in a throwaway child, since
a seccomp profile or an LSM may refuse it even with the capability); `choose` is the pure
decision, unit-tested on made-up environments.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from stepbuild.errors import IsolationUnavailable

NAMESPACES, CHROOT = "namespaces", "chroot"
# Strongest first. The rootless mode (a user namespace mapped from /etc/subuid, for a normal
# user or a container that allows user namespaces) belongs between the two, with its probe in
# `_unavailable`.
MODES = (NAMESPACES, CHROOT)
AUTO = "auto"
CHOICES = (AUTO, *MODES)

CAP_SYS_CHROOT, CAP_SYS_ADMIN = 18, 21
_STATUS = "/proc/self/status"


@dataclass(frozen=True, slots=True)
class Environment:
    """What the probes found: the effective capability mask, and the errno unshare of a mount
    namespace failed with in a throwaway child (None: it worked, or was not tried)."""

    effective: int
    unshare_errno: int | None = None


@dataclass(frozen=True, slots=True)
class Isolation:
    """The mode chosen, and for each stronger mode the reason it was not (for `-v`)."""

    mode: str
    passed_over: tuple[str, ...] = ()

    def describe(self) -> str:
        """The build's first line."""
        return f"isolation: {self.mode}"


def resolve(requested: str) -> Isolation:
    """The isolation to use for `requested` (one of CHOICES) in this process's environment.
    Raises IsolationUnavailable."""
    return choose(requested, probe(requested))


def choose(requested: str, env: Environment) -> Isolation:
    """The strongest mode `env` allows (AUTO), or `requested` if it allows it."""
    if requested not in CHOICES:
        raise ValueError(f"unknown isolation {requested!r}")
    wanted = MODES if requested == AUTO else (requested,)
    passed_over: list[str] = []
    for mode in MODES:
        reason = _unavailable(mode, env)
        if mode in wanted and reason is None:
            return Isolation(mode, tuple(passed_over))
        if mode in wanted:
            passed_over.append(f"{mode} unavailable: {reason}")
    if requested == AUTO:
        raise IsolationUnavailable(
            "no isolation is possible here: " + "; ".join(passed_over).replace(
                " unavailable", ""),
            hint="give the container CAP_SYS_CHROOT (in podman's and docker's default set)"
                 " for --isolation=chroot, or CAP_SYS_ADMIN for namespaces")
    raise IsolationUnavailable(f"--isolation={requested} is not possible here: "
                               f"{_unavailable(requested, env)}", hint=_options(requested))


def _unavailable(mode: str, env: Environment) -> str | None:
    """Why `mode` cannot run in `env`, or None."""
    if mode == NAMESPACES:
        if not env.effective & (1 << CAP_SYS_ADMIN):
            return "no CAP_SYS_ADMIN (an unprivileged container?), so no mount namespace"
        if env.unshare_errno is not None:
            name = errno.errorcode.get(env.unshare_errno, str(env.unshare_errno))
            return f"unshare(CLONE_NEWNS) refused ({name}: a seccomp profile or an LSM denies it)"
        return None
    if not env.effective & (1 << CAP_SYS_CHROOT):
        return "no CAP_SYS_CHROOT, so no chroot"
    return None


def _options(requested: str) -> str:
    if requested == NAMESPACES:
        return ("use --isolation=chroot (much weaker: see docs/security.md) or --isolation=auto,"
                " or run with CAP_SYS_ADMIN (a privileged container)")
    return "give the container CAP_SYS_CHROOT, or run with CAP_SYS_ADMIN and --isolation=auto"


def probe(requested: str = AUTO) -> Environment:
    """This process's environment. The unshare probe (a fork and ctypes, ~6 ms: a no-op
    rebuild pays it) runs only when its answer matters: namespaces may be chosen, the
    capability is there, and a seccomp filter is in force (without one, and with
    CAP_SYS_ADMIN, unshare(CLONE_NEWNS) cannot be refused)."""
    status = _status()
    effective = _field(status, "CapEff", 16)
    if (requested not in (AUTO, NAMESPACES) or not effective & (1 << CAP_SYS_ADMIN)
            or _field(status, "Seccomp", 10) == 0):
        return Environment(effective)
    return Environment(effective, _unshare_errno())


def effective_capabilities(status: str = _STATUS) -> int:
    """CapEff of this process (proc(5)); 0 where /proc cannot tell."""
    return _field(_status(status), "CapEff", 16)


def _status(path: str = _STATUS) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _field(status: str, name: str, base: int) -> int:
    """A number of /proc/self/status; 0 where it is missing (and, for Seccomp, -1: unknown,
    so that the unshare probe runs)."""
    for line in status.splitlines():
        if line.startswith(name + ":"):
            try:
                return int(line.split()[1], base)
            except (ValueError, IndexError):
                break
    return -1 if name == "Seccomp" else 0


def _unshare_errno() -> int | None:
    """unshare(CLONE_NEWNS) in a forked child, which exits with 0 or the errno: the builder
    itself must not move (it unshares later, once, in `host`)."""
    from stepbuild.sandbox import linux  # noqa: TID251 -- sandbox/'s own probe

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            linux.unshare(linux.CLONE_NEWNS)
        except OSError as exc:
            code = exc.errno or 255
        os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return None if code == 0 else abs(code)
