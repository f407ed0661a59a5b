"""Overlayfs's on-disk format, as the layer code reads it (Documentation/filesystems/overlayfs.rst).

- A whiteout is a character device 0/0; an opaque directory carries the `opaque` xattr
  (`trusted.overlay.opaque`, or `user.overlay.opaque` on a `userxattr` mount).
- Overlay's own xattrs are state, never data: a layer drops them (`kept_xattrs`), and an
  upper dir holding state we cannot turn into an OCI changeset (redirects, metacopy) is refused.
- `look_below` is overlay's lookup of a name through the lower dirs, top first.

`capture.py` (upper dir → OCI tar) and `apply.py` (OCI tar → layer dir) both read with these;
`unpack.py` drops overlay xattrs found in archives with `is_overlay_xattr`. No mounting here.
"""

from __future__ import annotations

import errno
import os
import stat

from stepbuild.errors import LayerError
from stepbuild.fs.userns import overlay_xattr_namespace

__all__ = [
    "Hit",
    "LowerWalk",
    "fd_path",
    "is_overlay_xattr",
    "is_whiteout",
    "kept_xattrs",
    "look_below",
    "opaque_xattr",
    "overlay_opaque",
    "read_xattrs",
]

# `trusted.overlay.*`, or `user.overlay.*` on a `userxattr` mount (overlayfs.rst, "User xattr")
_OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
# Overlay state that makes an upper dir an incomplete diff (redirect_dir moves, metacopy
# files without data) or that overlay never writes into an upper dir (whiteouts of the
# nested-overlay "xwhiteout" kind): refuse it (BuildKit's checkRedirect; docs/security.md rule 10).
_REFUSED_OVERLAY_KEYS = frozenset({"redirect", "metacopy", "whiteout", "whiteouts"})


def opaque_xattr() -> str:
    """The xattr that makes a layer dir's directory opaque for this process:
    `trusted.overlay.opaque` as root of the host with CAP_SYS_ADMIN, else
    `user.overlay.opaque` (rootless and container root mount overlay with `userxattr`;
    chroot isolation mounts nothing and reads both): fs/userns.overlay_xattr_namespace."""
    return f"{overlay_xattr_namespace()}.overlay.opaque"


def is_whiteout(st: os.stat_result) -> bool:
    """An overlay whiteout: a character device with device number 0/0 (overlayfs.rst)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def read_xattrs(path: bytes) -> dict[str, bytes]:
    """All xattrs of `path` (not following a symlink); {} where the filesystem has no xattrs."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return {}
        raise
    values = {}
    for name in names:
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return values


def is_overlay_xattr(name: str) -> bool:
    """Overlay's own state (`trusted.overlay.*`, `user.overlay.*`), never data in a layer."""
    return name.startswith(_OVERLAY_XATTR_PREFIXES)


def kept_xattrs(xattrs: dict[str, bytes]) -> tuple[tuple[str, bytes], ...]:
    """The xattrs a layer records: all but overlay's (security.capability included)."""
    return tuple(sorted((k, v) for k, v in xattrs.items() if not is_overlay_xattr(k)))


def overlay_opaque(path: bytes, xattrs: dict[str, bytes], is_dir: bool) -> bool:
    """Whether an upper entry is an opaque dir; raise LayerError for state we cannot convert."""
    opaque = False
    for name, value in xattrs.items():
        if not is_overlay_xattr(name):
            continue
        key = name.split(".", 2)[2]  # escaped `*.overlay.overlay.*` xattrs are plain data
        if key in _REFUSED_OVERLAY_KEYS:
            raise LayerError(
                f"upper dir entry {os.fsdecode(path)} has overlay state {name}: "
                "the layer would be incomplete",
                hint="mount the overlay with redirect_dir=off,metacopy=off,index=off",
            )
        if key == "opaque" and is_dir:
            if value != b"y":
                raise LayerError(f"unknown overlay state {name}={value!r} on {os.fsdecode(path)}")
            opaque = True
    return opaque


def _lower_opaque(path: bytes) -> bool:
    for prefix in _OVERLAY_XATTR_PREFIXES:
        try:
            if os.getxattr(path, prefix + "opaque", follow_symlinks=False) == b"y":
                return True
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
    return False


Hit = tuple[bytes, os.stat_result]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def fd_path(dir_fd: int, name: bytes) -> bytes:
    """A short path naming `name` in the open dir `dir_fd`, for the xattr calls that have no
    `*at` form: deep trees have paths longer than PATH_MAX, their fd-relative names do not."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def look_below(below: list[bytes], name: bytes) -> tuple[Hit | None, list[bytes]]:
    """Overlay's lookup of `name` in the lower dirs `below` (top first, where the parent is
    visible): the topmost visible entry, or None if there is none or a whiteout hides it; and
    the lower dirs the lookup continues in when that entry is a directory.

    As fs/overlayfs/namei.c does: a whiteout or a non-directory ends the lookup, and so does
    an opaque directory, after itself.
    """
    hit: Hit | None = None
    dirs: list[bytes] = []
    for lower in below:
        path = lower + b"/" + name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            if hit is None and not is_whiteout(st):
                hit = (path, st)
            break
        if hit is None:
            hit = (path, st)
        dirs.append(path)
        if _lower_opaque(path):
            break
    return hit, dirs


class LowerWalk:
    """The lower dirs (top first) following a walk of an upper dir, one open fd each.

    `below` lists are indexes into the lowers. `look(below, name)` is `look_below` there;
    `down(dirs, name)` moves the lowers `dirs` (what `look` returned) into their dir `name`
    and `up(dirs)` moves them back by `..`: a tree's depth costs no descriptors, and no path
    grows past PATH_MAX. `..` is right because lower dirs are store dirs nothing changes.
    """

    def __init__(self, lowers: list[bytes]) -> None:
        self._fds: list[int] = []
        try:
            for lower in lowers:
                self._fds.append(os.open(lower, _DIR_FLAGS))
        except BaseException:
            self.close()
            raise

    def all(self) -> list[int]:
        return list(range(len(self._fds)))

    def paths(self, below: list[int]) -> list[bytes]:
        """Paths naming the current dir of each of the lowers `below` (valid until the next
        `down` or `up`)."""
        return [b"/proc/self/fd/%d" % self._fds[i] for i in below]

    def look(self, below: list[int], name: bytes) -> tuple[Hit | None, list[int]]:
        """`look_below` of `name` in the lowers `below`; the Hit's path is valid until
        the next `down` or `up`."""
        paths = {b"/proc/self/fd/%d" % self._fds[i]: i for i in below}
        hit, dirs = look_below(list(paths), name)
        return hit, [paths[d[: -len(name) - 1]] for d in dirs]

    def down(self, dirs: list[int], name: bytes) -> None:
        for i in dirs:
            self._move(i, name)

    def up(self, dirs: list[int]) -> None:
        for i in dirs:
            self._move(i, b"..")

    def _move(self, i: int, name: bytes) -> None:
        fd = os.open(name, _DIR_FLAGS, dir_fd=self._fds[i])
        os.close(self._fds[i])
        self._fds[i] = fd

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
