"""Which isolation RUN steps (and `stepbuild run`) get here, and why not a stronger one.

Modes, strongest first:

- `namespaces`: root with CAP_SYS_ADMIN (the host, a privileged container). The builder
  makes its own mount namespace and mounts overlays; each step gets new mount, PID, UTS, IPC
  and network namespaces and `pivot_root` (`host.py`, `child.py`).
- `userns`: the same, from inside a user namespace of the builder's own, whose root holds
  CAP_SYS_ADMIN over what that namespace owns (`userns.py`). A normal user gets it mapped
  from /etc/subuid through newuidmap (rootless); root without CAP_SYS_ADMIN (an
  unprivileged container's default pod, whose seccomp profile still allows user
  namespaces) maps every id it has to itself, with no helper (`idmap.identity_maps`).
- `chroot`: no namespace and no mount at all; the step runs `chroot`ed into a plain copy of
  its root and its layer comes from comparing the tree before and after
  (`chroot_child.py`, `layers/treediff.py`). Needs CAP_SYS_CHROOT only: what root keeps in
  a container whose seccomp profile also denies user namespaces. Much weaker
  (docs/security.md, "Chroot isolation").

`--isolation=auto` (the default) takes the first mode the probes allow; asking for one by
name takes it or refuses with one line naming what is missing. `probe` looks at this process
(its euid, CapEff in /proc/self/status, and only where the answer decides anything,
unshare(CLONE_NEWNS) or unshare(CLONE_NEWUSER) tried in a throwaway child, since a seccomp
profile or an LSM may refuse them whatever the capabilities); `choose` is the pure decision,
unit-tested on made-up environments. Both run before the command does anything, in the
process that may then enter the user namespace (`cli/rootless.py`).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from stepbuild.errors import IsolationUnavailable
from stepbuild.fs.userns import effective_capabilities

__all__ = ["CHOICES", "MODES", "Environment", "Isolation", "choose", "effective_capabilities",
           "probe", "resolve"]

NAMESPACES, USERNS, CHROOT = "namespaces", "userns", "chroot"
MODES = (NAMESPACES, USERNS, CHROOT)  # strongest first
AUTO = "auto"
CHOICES = (AUTO, *MODES)

CAP_SYS_CHROOT, CAP_SYS_ADMIN = 18, 21
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_STATUS = "/proc/self/status"
NONE_HINT = ("run the container with CAP_SYS_CHROOT (in podman's and docker's default set) for"
             " --isolation=chroot, a seccomp profile that allows user namespaces (podman's and"
             " docker's defaults do), or CAP_SYS_ADMIN (--privileged)")


@dataclass(frozen=True, slots=True)
class Environment:
    """What the probes found: the effective uid and capability mask, and the errno
    unshare(CLONE_NEWNS) and unshare(CLONE_NEWUSER) failed with in a throwaway child (None:
    it worked, or was not tried because nothing depended on it)."""

    euid: int
    effective: int
    unshare_errno: int | None = None
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


def resolve(requested: str = AUTO) -> Isolation:
    """The isolation for `requested` (one of CHOICES) in this process's environment.
    Raises IsolationUnavailable."""
    return choose(requested, probe(requested))


def choose(requested: str, env: Environment) -> Isolation:
    """The strongest mode `env` allows (AUTO), or `requested` if `env` allows it;
    IsolationUnavailable, naming what is missing, otherwise."""
    if requested not in CHOICES:
        raise ValueError(f"unknown isolation {requested!r}")
    if requested != AUTO:
        reason = _unavailable(requested, env)
        if reason is not None:
            raise IsolationUnavailable(f"--isolation={requested} is not possible here: {reason}",
                                       hint=_options(requested))
        return Isolation(requested, env.root)
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
        return _refused(env.unshare_errno, "unshare(CLONE_NEWNS) refused ({}: a seccomp"
                        " profile or an LSM denies it)")
    if mode == USERNS:
        return _refused(env.userns_errno, "user namespaces are refused (unshare(CLONE_NEWUSER):"
                        " {}; a seccomp profile, or sysctl user.max_user_namespaces)")
    if not env.root:
        return "not root (a normal user gets userns)"
    if not env.effective & (1 << CAP_SYS_CHROOT):
        return "no CAP_SYS_CHROOT, so no chroot"
    return None


def _refused(err: int | None, template: str) -> str | None:
    """`template` with the errno's name, or None when there was no error."""
    return None if err is None else template.format(errno.errorcode.get(err, str(err)))


def _options(requested: str) -> str:
    if requested == NAMESPACES:
        return ("use --isolation=auto (userns or chroot, whichever this environment allows),"
                " or run with CAP_SYS_ADMIN (a privileged container)")
    if requested == USERNS:
        return "allow user namespaces (the container's seccomp profile), or use --isolation=auto"
    return "give the container CAP_SYS_CHROOT, or use --isolation=auto"


def probe(requested: str = AUTO) -> Environment:
    """This process's environment. The unshare probes (a fork each, a few ms: a no-op
    rebuild pays them) run only as root and only when their answer decides anything: the
    mount namespace one where namespaces may be chosen with CAP_SYS_ADMIN under a seccomp
    filter (without one, CAP_SYS_ADMIN cannot be refused it), the user namespace one where
    userns may be chosen and namespaces are not possible. A normal user's `userns.enter`
    reports its own failure."""
    wanted = MODES if requested == AUTO else (requested,)
    status = _status()
    euid, effective = os.geteuid(), _field(status, "CapEff", 16)
    if euid != 0:
        return Environment(euid, effective)
    unshare_errno = None
    admin = bool(effective & (1 << CAP_SYS_ADMIN))
    if NAMESPACES in wanted and admin and _field(status, "Seccomp", 10) != 0:
        unshare_errno = _unshare_errno(_CLONE_NEWNS)
    userns_errno = None
    if USERNS in wanted and (not admin or unshare_errno is not None or requested == USERNS):
        userns_errno = _unshare_errno(_CLONE_NEWUSER)
    return Environment(euid, effective, unshare_errno, userns_errno)


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


def _unshare_errno(flags: int) -> int | None:
    """unshare(`flags`) in a forked child, which exits with 0 or the errno: the builder
    itself must not move (it unshares later, once, in `host` or `userns.enter`)."""
    from stepbuild.sandbox import linux  # noqa: TID251 -- sandbox/'s own probe

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            linux.unshare(flags)
        except OSError as exc:
            code = exc.errno or 255
        os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return None if code == 0 else abs(code)
