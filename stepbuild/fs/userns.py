"""Which user namespace this process runs in, as the layer and mount code needs to know it.

Rootless stepbuild (`sandbox/userns.py`) runs the builder as "root" of a user namespace of its
own. Most code cannot tell the difference, by design: ids are the container's. Two things
can: overlayfs, whose `trusted.overlay.*` xattrs need root in the host's namespace (so a
rootless overlay is mounted with `userxattr` and its layer dirs carry `user.overlay.*`), and a
chown to an id the namespace does not map, which the kernel refuses with EINVAL.

Reading /proc answers both; nothing here changes anything (no syscalls beyond reading two
small files and a stat), so every package may ask.
"""

from __future__ import annotations

import functools
import os

__all__ = ["IdRange", "in_user_namespace", "mapped_count", "owner_mapped", "parse_id_map",
           "unmapped_message"]

# What the host's (the initial) user namespace shows: every id mapped to itself.
_IDENTITY = ((0, 0, 2**32 - 1),)
# The inode number of the initial user namespace's /proc/PID/ns/user, fixed by the kernel
# (PROC_USER_INIT_INO in include/linux/proc_ns.h, since Linux 3.8).
_INITIAL_USER_NS_INO = 0xEFFFFFFD
_CAP_SYS_ADMIN = 21
SUBID_FILES = "/etc/subuid and /etc/subgid"

IdRange = tuple[int, int, int]  # (first id inside, first id outside, count), as uid_map(5)


def parse_id_map(text: str) -> tuple[IdRange, ...]:
    """The lines of a /proc/PID/uid_map or gid_map (user_namespaces(7)) as (inside, outside,
    count) triples; a malformed line raises ValueError."""
    ranges = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise ValueError(f"malformed id map line {line!r}")
        inside, outside, count = (int(f) for f in fields)
        ranges.append((inside, outside, count))
    return tuple(ranges)


@functools.cache
def _own_map(kind: str) -> tuple[IdRange, ...]:
    try:
        with open(f"/proc/self/{kind}_map", encoding="ascii") as f:
            return parse_id_map(f.read())
    except OSError:  # no /proc (a chroot): nothing to go by, take it as the host's
        return _IDENTITY


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the host's (rootless, or root
    of an unprivileged container in one of its own).

    The namespace's inode says so; the map alone cannot: container root maps every id to
    itself (`sandbox/idmap.identity_maps`), which reads exactly as the host's map. Without
    /proc/self/ns (an old kernel, no /proc) the map is what there is to go by.

    Cached: a process does not change its user namespace after `sandbox.userns.enter`,
    which runs before anything asks (and a fork()ed child inherits the answer with the
    namespace)."""
    inode = _user_ns_inode()
    if inode is None:
        return _own_map("uid") != _IDENTITY
    return inode != _INITIAL_USER_NS_INO


@functools.cache
def _user_ns_inode() -> int | None:
    try:
        return os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return None


def overlay_xattr_namespace() -> str:
    """Which xattr namespace this process's layer dirs keep overlay's state in: "trusted",
    what a kernel overlay mounted as root on the host reads, where this process may set it
    (outside a user namespace, with CAP_SYS_ADMIN); else "user", what an overlay mounted with
    `userxattr` in a user namespace reads, and what chroot isolation (which mounts nothing)
    can write without CAP_SYS_ADMIN."""
    if in_user_namespace() or not _own_capabilities() & (1 << _CAP_SYS_ADMIN):
        return "user"
    return "trusted"


@functools.cache
def _own_capabilities() -> int:
    return effective_capabilities()


def effective_capabilities(status: str = "/proc/self/status") -> int:
    """CapEff of this process (proc(5)); 0 where /proc cannot tell."""
    try:
        with open(status, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def mapped_count(ranges: tuple[IdRange, ...]) -> int:
    """How many ids a map makes usable, counted from 0 (the rootless maps are contiguous)."""
    end = 0
    for inside, _, count in sorted(ranges):
        if inside > end:
            break
        end = max(end, inside + count)
    return end


def owner_mapped(uid: int, gid: int) -> bool:
    """Whether files may be given the owner uid:gid here (always, outside a user namespace)."""
    return uid < mapped_count(_own_map("uid")) and gid < mapped_count(_own_map("gid"))


def unmapped_message(owner: str) -> str:
    """Why a chown to `owner` ("5:5", or words such as "an entry's owner") fails with EINVAL
    in this user namespace, naming the fix, as rootless podman does."""
    uids, gids = mapped_count(_own_map("uid")), mapped_count(_own_map("gid"))
    if uids <= 1 or gids <= 1:
        return (f"cannot chown to {owner}: rootless with no subordinate ids, only 0:0 is mapped"
                f" (add ranges for your user to {SUBID_FILES})")
    return (f"cannot chown to {owner}: rootless, only ids 0-{min(uids, gids) - 1} are mapped"
            f" (larger ranges for your user in {SUBID_FILES} map more)")
