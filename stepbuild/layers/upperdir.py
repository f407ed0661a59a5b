"""The changes `treediff.diff` found → an overlay upper dir, as overlay would have left it.

`write_upper(changes, after_root, after, upper)` fills the new dir `upper` so that
`capture.capture(upper, lowers)` gives the layer overlay would have given, and so that
`upper` can become the layer dir later steps use as a lower dir:

- a changed non-directory is *moved* (rename(2)) from the step's tree `after_root` into
  `upper`: no byte is copied, and two names of one inode stay one inode (a hard link in the
  layer), as in an overlay upper dir;
- a directory is made, with the step's attributes (mode, owner, xattrs, then its mtime, once
  all it holds is in place): a changed one, an opaque one (overlay's `trusted.overlay.opaque`
  xattr), and every directory on the way to a change — capture leaves those out when they
  equal the lower dir, as it does for the ones overlay only copied up;
- a whiteout is overlay's: a character device 0/0, which needs no CAP_MKNOD (Linux 5.8+).

`after_root` loses the files moved out of it; it is the step's scratch copy, removed next.
Both trees are ours alone while this runs, so one descriptor each goes down by name and up
by `..` whatever the depth. Nothing here follows a symlink.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from stepbuild.errors import LayerError
from stepbuild.layers.overlayfs import opaque_xattr
from stepbuild.layers.treediff import (
    ROOT,
    Action,
    Change,
    Entry,
    Tree,
    components,
    needed_dirs,
    parent_of,
)

__all__ = ["opaque_supported", "write_upper"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def opaque_supported(scratch: Path) -> bool:
    """Whether this process can mark a directory opaque with the xattr its layer dirs use
    (`overlayfs.opaque_xattr`: `user.*` where `trusted.*`, which needs CAP_SYS_ADMIN, cannot
    be had), on the store's filesystem. `scratch` is an empty directory of ours there."""
    try:
        os.setxattr(scratch, opaque_xattr(), b"y", follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
            return False
        raise
    os.removexattr(scratch, opaque_xattr(), follow_symlinks=False)
    return True


def write_upper(changes: Sequence[Change], after_root: Path, after: Tree, upper: Path) -> None:
    """Make `upper` (it must not exist) hold `changes` (from `treediff.diff`, parents first),
    taking what is put from `after_root`, whose snapshot is `after`."""
    os.mkdir(upper, 0o700)
    dirs = needed_dirs(changes)
    made = set(dirs)
    cursor = _Cursor(after_root, upper)
    try:
        for path in dirs:  # parents first: each one's own parent is there already
            cursor.enter(parent_of(path))
            cursor.mkdir(path.rpartition(b"/")[2])
        for change in changes:
            cursor.enter(parent_of(change.path))
            name = change.path.rpartition(b"/")[2]
            if change.action is Action.WHITEOUT:
                os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=cursor.upper)
            elif change.action is Action.OPAQUE or after[change.path].is_dir:
                if change.path not in made:
                    cursor.mkdir(name)
                    made.add(change.path)
                if change.action is Action.OPAQUE:
                    os.setxattr(_fd_path(cursor.upper, name), opaque_xattr(), b"y",
                                follow_symlinks=False)
            else:
                os.rename(name, name, src_dir_fd=cursor.after, dst_dir_fd=cursor.upper)
        # Attributes last, deepest first: making a child changes its directory's mtime.
        for path in sorted(made, key=components, reverse=True):
            cursor.enter(parent_of(path))
            _set_attributes(cursor.upper, path.rpartition(b"/")[2], after[path])
        cursor.enter(ROOT)
        _set_attributes(cursor.upper, None, after[ROOT])
    except OSError as exc:
        raise LayerError(f"cannot record the step's changes: {exc.strerror or exc}"
                         f" ({os.fsdecode(exc.filename or b'') or 'the upper dir'})") from exc
    finally:
        cursor.close()


class _Cursor:
    """The same directory in the step's tree and in the upper dir, one descriptor each."""

    def __init__(self, after_root: Path, upper: Path) -> None:
        self.after = os.open(after_root, _DIR_FLAGS)
        try:
            self.upper = os.open(upper, _DIR_FLAGS)
        except BaseException:
            os.close(self.after)
            raise
        self._at: list[bytes] = []

    def enter(self, path: bytes) -> None:
        """Move both descriptors to the directory `path` (relative to the roots)."""
        target = components(path) if path else []
        common = 0
        while common < min(len(target), len(self._at)) and target[common] == self._at[common]:
            common += 1
        while len(self._at) > common:
            self._move(b"..")
            self._at.pop()
        for name in target[common:]:
            self._move(name)
            self._at.append(name)

    def mkdir(self, name: bytes) -> None:
        os.mkdir(name, 0o700, dir_fd=self.upper)

    def _move(self, name: bytes) -> None:
        after = os.open(name, _DIR_FLAGS, dir_fd=self.after)
        try:
            upper = os.open(name, _DIR_FLAGS, dir_fd=self.upper)
        except BaseException:
            os.close(after)
            raise
        os.close(self.after)
        os.close(self.upper)
        self.after, self.upper = after, upper

    def close(self) -> None:
        os.close(self.after)
        os.close(self.upper)


def _fd_path(dir_fd: int, name: bytes) -> bytes:
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def _set_attributes(dir_fd: int, name: bytes | None, entry: Entry) -> None:
    """Owner, then mode (chown may clear set-id bits), then xattrs, then mtime, of the
    directory `name` in `dir_fd` (None: `dir_fd` itself)."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd) if name is not None else dir_fd
    try:
        os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)
        for key, value in entry.xattrs:
            os.setxattr(fd, key, value)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
    finally:
        if fd != dir_fd:
            os.close(fd)
