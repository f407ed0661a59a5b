"""What a sandboxed step mounts and runs, as plain data — no syscalls here.

A `SandboxSpec` says which already-mounted rootfs to enter and what to run there; the helpers
below expand it into the full, ordered list of `Mount` values the child performs (`/proc`, a
minimal `/dev`, read-only `/sys`, Docker's masked and read-only paths, the /etc files, the
step's extra mounts) and into `child_payload`, the plain dict `child.py` receives. Everything
is pure and JSON-serialisable, so the policy is unit-tested without root; `child.py` performs
it and `linux.py` holds the syscalls.

Mount options use mount(8)-like words in `Mount.options` (comma-separated):

- `ro`, `nosuid`, `noexec`: mount attributes. Every mount is `nodev` unless it says `dev`: only
  the bound device nodes, the /dev/null masks and devpts need devices, so a root step that
  mknods a block device anywhere else (even in /dev, a tmpfs) cannot open it.
- `rbind`: bind the whole tree below the source (bind only).
- `optional`: when the target (or a bind's source) is missing, skip the mount with a notice
  instead of failing. Mounts below a skipped target are skipped silently.
- `create=dir` / `create=file`: make a missing mount point; its parent must exist. The stub is
  made where the parent lives — in the step's upper dir if that is the rootfs — so use it
  only below a tmpfs this sandbox mounted, or remove the stub afterwards.
- anything else is a filesystem parameter handed to fsconfig(2): `key=value`, or `key` alone.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from dataclasses import dataclass

from stepbuild.sandbox.limits import DEFAULT_SHM_SIZE, RLIMITS, Limits

# Docker's default capability set (moby oci/caps/defaults.go) and their numbers
# (linux/capability.h). Its mask, 0x00000000a80425fb, is what `CapBnd` shows in a container.
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18,
    "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31,
}
DOCKER_DEFAULT_CAPS = tuple(CAPABILITIES)

# moby oci/defaults.go: hidden behind /dev/null (files) or an empty read-only tmpfs (dirs) ...
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
# ... and made read-only: writing /proc/sys/kernel/core_pattern would run a host program.
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")  # bound from the host's /dev
DEV_LINKS = (("/dev/ptmx", "pts/ptmx"), ("/dev/fd", "/proc/self/fd"),
             ("/dev/stdin", "/proc/self/fd/0"), ("/dev/stdout", "/proc/self/fd/1"),
             ("/dev/stderr", "/proc/self/fd/2"))
ETC_FILES = ("hosts", "resolv.conf", "hostname")
TTY_GID = 5  # the group of /dev/pts terminals, as in Docker

# kind -> what child.py does. Any other kind would be a filesystem type: only these are allowed.
FILESYSTEMS = frozenset({"proc", "sysfs", "tmpfs", "devpts", "mqueue"})
KINDS = FILESYSTEMS | {"bind", "symlink", "mask", "readonly"}
NETWORKS = ("host", "none", "private")
ISOLATIONS = ("namespaces", "chroot")
# What a chrooted step must not keep: CAP_SYS_CHROOT would let root chroot out again (a
# chroot is no barrier to it, chroot(2)); CAP_MKNOD would let it make and open a disk's
# device node, with no nodev mount to stop that here.
CHROOT_DROPPED = ("SYS_CHROOT", "MKNOD")

_ATTR_WORDS = frozenset({"ro", "nosuid", "noexec", "nodev"})
_PLAN_WORDS = frozenset({"dev", "rbind", "optional"})


@dataclass(frozen=True, slots=True)
class MountOptions:
    """`Mount.options` parsed: attributes, fsconfig parameters and child.py's own words."""

    attrs: tuple[str, ...] = ()
    params: tuple[tuple[str, str | None], ...] = ()
    recursive: bool = False
    optional: bool = False
    create: str = ""  # "", "dir" or "file"


@dataclass(frozen=True, slots=True)
class Mount:
    """One thing to put in place inside the container, performed in list order.

    `kind` is one of KINDS:

    - a filesystem type in FILESYSTEMS: a fresh instance on `target`. For `sysfs` and `proc`,
      a non-empty `source` is the host path to bind (recursively; sysfs read-only) instead
      when the kernel refuses a fresh one: in a user namespace, it refuses a proc or sysfs
      whose existing mounts are partly hidden (a container's masked /proc/kcore, ...).
    - `bind`: the host path `source` (resolved on the host) onto `target`.
    - `symlink`: a symlink at `target` whose text is `source`.
    - `mask`: hide `target`: bind `source` (the host's /dev/null, so reads are empty, as in
      Docker) over a file, or mount an empty read-only nodev tmpfs over a directory. Skipped
      when missing.
    - `readonly`: rebind `target` onto itself read-only, recursively. Skipped when missing.

    `target` is a path inside the container: it is resolved with the rootfs as "/", so
    symlinks in an image cannot send a mount to a host path.
    """

    kind: str
    source: str
    target: str
    readonly: bool = False
    options: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown mount kind {self.kind!r}")
        if not self.target.startswith("/") or posixpath.normpath(self.target) != self.target:
            raise ValueError(f"mount target must be a clean absolute path: {self.target!r}")
        if self.kind == "bind" and not self.source.startswith("/"):
            raise ValueError(f"bind source must be an absolute host path: {self.source!r}")
        opts = self.parsed()
        if opts.params and self.kind not in FILESYSTEMS:
            raise ValueError(f"{self.kind} mount takes no filesystem options: {self.options!r}")
        if opts.create not in ("", "dir", "file"):
            raise ValueError(f"create= must be dir or file: {self.options!r}")

    def parsed(self) -> MountOptions:
        """Split `options` into attributes (nodev added unless `dev`), parameters and words."""
        words = [w.strip() for w in self.options.split(",") if w.strip()]
        attrs = {w for w in words if w in _ATTR_WORDS} | ({"ro"} if self.readonly else set())
        if "dev" not in words:
            attrs.add("nodev")
        create = next((w.partition("=")[2] for w in words if w.startswith("create=")), "")
        params = tuple(
            (k, v if sep else None)
            for k, sep, v in (w.partition("=") for w in words)
            if k not in _ATTR_WORDS | _PLAN_WORDS and k != "create"
        )
        return MountOptions(tuple(sorted(attrs)), params, "rbind" in words,
                            "optional" in words or self.kind in ("mask", "readonly"), create)


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """One command to run in a sandbox.

    `rootfs` is the host path of the step's merged overlay, already mounted by the builder in
    its private mount namespace. `cwd` is created (as root, like Docker's WORKDIR) if missing.
    `network` is "host" (share the host's network namespace), "none" (a new one with only
    `lo`, up) or "private": join the network namespace bound at the host path `netns` (the
    build's, see `network.py`). `etc_dir` holds hosts, resolv.conf and hostname, bound over
    the image's files so they never land in a layer; an image without one of those files
    does not get it.
    `mounts` are the step's extra mounts (RUN --mount), applied after the standard ones.
    `limits` are its resource limits (`limits.py`): the cgroup ones are `sandbox.run`'s
    business, the ulimits the child's, the /dev/shm size is in its mounts.
    `seccomp` is the filter's setting, see `seccomp.py`: "default" (the system profile, with
    the hardening overlay), "unconfined", or the absolute path of a profile.
    `isolation` is "namespaces" (`child.py`) or "chroot" (`chroot_child.py`: `rootfs` is a
    plain directory, no namespace is made and nothing is mounted, so no `mounts`, no
    `etc_dir` and only the host's network; see `isolation.py`).
    """

    rootfs: str
    argv: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    hostname: str = "stepbuild"
    network: str = "host"
    etc_dir: str = ""
    mounts: tuple[Mount, ...] = ()
    limits: Limits = Limits()
    seccomp: str = "default"
    netns: str = ""
    isolation: str = "namespaces"

    def __post_init__(self) -> None:
        if not self.rootfs.startswith("/"):
            raise ValueError(f"rootfs must be an absolute path: {self.rootfs!r}")
        if not self.argv:
            raise ValueError("argv must not be empty")
        if not self.cwd.startswith("/"):
            raise ValueError(f"cwd must be an absolute path: {self.cwd!r}")
        if bad := [e for e in self.env if "=" not in e]:
            raise ValueError(f"env entries must be KEY=VALUE: {bad!r}")
        if any("\0" in s for s in (*self.argv, *self.env, self.cwd)):
            raise ValueError("argv, env and cwd cannot hold NUL characters")
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}: {self.network!r}")
        if self.seccomp not in ("default", "unconfined") and not self.seccomp.startswith("/"):
            raise ValueError(f"seccomp must be default, unconfined or a path: {self.seccomp!r}")
        if (self.network == "private") != self.netns.startswith("/"):
            raise ValueError("netns (an absolute path) goes with network \"private\" only")
        if not 0 < len(self.hostname.encode()) <= 64:
            raise ValueError(f"hostname must be 1-64 bytes: {self.hostname!r}")
        if not all(0 <= i < 2**32 - 1 for i in (self.uid, self.gid, *self.groups)):
            raise ValueError("uid, gid and groups must be 32-bit ids")
        self._check_isolation()

    def _check_isolation(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}: {self.isolation!r}")
        if self.isolation == "chroot" and (self.mounts or self.etc_dir
                                            or self.network != "host"):
            raise ValueError("a chroot sandbox mounts nothing and has the host's network only")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SandboxSpec:
        data = json.loads(text)
        data["mounts"] = tuple(Mount(**m) for m in data.get("mounts", ()))
        data["limits"] = Limits.from_json_data(data.get("limits", {}))
        for key in ("argv", "env", "groups"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


def standard_mounts(shm_size: int = DEFAULT_SHM_SIZE, tty_gid: bool = True
                    ) -> tuple[Mount, ...]:
    """/proc, a minimal /dev, read-only /sys, then Docker's masked and read-only paths.

    /dev is a small tmpfs holding bind mounts of the host's harmless device nodes, devpts and
    a few symlinks; unlike Docker's it is nodev (the binds are their own mounts and keep
    working), because there is no device cgroup here to stop a mknod'ed disk being opened.
    /dev/shm holds `shm_size` bytes at most (--shm-size; docker's default, 64 MiB).
    Terminals in /dev/pts belong to the tty group (gid 5) as in Docker, unless `tty_gid` is
    False: rootless without subordinate ids maps no gid 5, and devpts refuses an unmapped gid.
    """
    devpts = "dev,nosuid,noexec,create=dir,newinstance,ptmxmode=0666,mode=0620"
    mounts = [
        # The host's /proc, bound, where a fresh one is refused: it shows the processes of
        # the builder's PID namespace (docs/security.md, "Root without CAP_SYS_ADMIN").
        Mount("proc", "/proc", "/proc", options="nosuid,noexec,optional"),
        Mount("tmpfs", "", "/dev", options="nosuid,optional,mode=755,size=65536k"),
        *(Mount("bind", f"/dev/{n}", f"/dev/{n}", options="dev,create=file,optional")
          for n in DEV_NODES),
        Mount("devpts", "", "/dev/pts", options=devpts + (f",gid={TTY_GID}" if tty_gid else "")),
        Mount("tmpfs", "", "/dev/shm", options="nosuid,noexec,create=dir,mode=1777,"
                                                f"size={shm_size}"),
        Mount("mqueue", "", "/dev/mqueue", options="nosuid,noexec,create=dir"),
        *(Mount("symlink", text, link) for link, text in DEV_LINKS),
        Mount("sysfs", "/sys", "/sys", readonly=True, options="nosuid,noexec,optional"),
        *(Mount("mask", "/dev/null", p, options="dev") for p in MASKED_PATHS),
        *(Mount("readonly", "", p) for p in READONLY_PATHS),
    ]
    return tuple(mounts)


def etc_mounts(etc_dir: str) -> tuple[Mount, ...]:
    """/etc/hosts, resolv.conf and hostname from `etc_dir`; skipped where either is missing."""
    if not etc_dir:
        return ()
    return tuple(Mount("bind", posixpath.join(etc_dir, name), f"/etc/{name}", options="optional")
                 for name in ETC_FILES)


def all_mounts(spec: SandboxSpec, tty_gid: bool = True) -> tuple[Mount, ...]:
    """Every mount of a step, in the order child.py performs them (`tty_gid`: see
    `standard_mounts`)."""
    return (standard_mounts(spec.limits.shm_size, tty_gid) + etc_mounts(spec.etc_dir)
            + spec.mounts)


def capability_mask(names: tuple[str, ...] = DOCKER_DEFAULT_CAPS) -> int:
    return sum(1 << CAPABILITIES[name] for name in set(names))


def _step_capabilities(isolation: str) -> tuple[str, ...]:
    if isolation == "chroot":
        return tuple(c for c in DOCKER_DEFAULT_CAPS if c not in CHROOT_DROPPED)
    return DOCKER_DEFAULT_CAPS


def child_payload(spec: SandboxSpec, tty_gid: bool = True) -> dict[str, object]:
    """What child.py receives: the spec with its mounts expanded and parsed, as plain data
    (dicts, lists, str, int, bool, None) so the child needs neither this module nor json.
    `tty_gid`: whether gid TTY_GID exists where the step runs (see `standard_mounts`)."""
    mounts = []
    for m in (all_mounts(spec, tty_gid) if spec.isolation == "namespaces" else ()):
        o = m.parsed()
        mounts.append({"kind": m.kind, "source": m.source, "target": m.target,
                       "attrs": list(o.attrs), "params": [list(p) for p in o.params],
                       "recursive": o.recursive, "optional": o.optional, "create": o.create})
    return {"rootfs": spec.rootfs, "argv": list(spec.argv), "env": list(spec.env),
            "cwd": spec.cwd, "uid": spec.uid, "gid": spec.gid, "groups": list(spec.groups),
            "hostname": spec.hostname, "network": spec.network, "netns": spec.netns,
            "capabilities": capability_mask(_step_capabilities(spec.isolation)),
            "mounts": mounts, "isolation": spec.isolation,
            "rlimits": [[u.name, RLIMITS[u.name], u.soft, u.hard] for u in spec.limits.ulimits]}
