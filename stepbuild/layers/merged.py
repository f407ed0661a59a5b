"""An image's layer dirs → a plain copy of what an overlay mount of them shows.

Where nothing can be mounted (`--isolation=chroot`), a step runs in a copy of its parent's
tree instead of an overlay: `copy_merged(lowers, target)` writes into the empty dir `target`
the tree overlayfs would show for the layer dirs `lowers` (top first): each name's topmost
entry (`overlayfs.look_below`: a whiteout hides what is below, an opaque dir ends the lookup),
directories merged across layers, with the attributes of their topmost copy. The copy keeps
what a step can see and a layer records: kinds, contents, modes, owners, mtimes to the
nanosecond, xattrs (not overlay's own), device numbers, and hard links (two names of one
inode in a layer dir are one inode in the copy, as overlay shows them). So a directory the
step leaves alone has exactly the attributes of the lower dir, which is what lets capture
leave it out of the layer (`treediff`).

`hollow` names directories whose content is not copied (the dir itself is): RUN's /proc,
/dev and /sys, which a namespaced step never sees either (something is mounted over them).

Reads trusted store dirs (`Store.layer_dir` checked them) and writes only into `target`,
which is ours: every entry is made new there (O_EXCL, mkdir), so nothing is followed. A
socket is left out (no layer can hold one). Raises LayerError naming the entry when the copy
cannot be made as it should (a device node without CAP_MKNOD, a `trusted.*` xattr without
CAP_SYS_ADMIN): the caller removes `target`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stepbuild.errors import LayerError
from stepbuild.layers.overlayfs import LowerWalk, kept_xattrs, read_xattrs

__all__ = ["copy_merged"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


@dataclass(slots=True)
class _Frame:
    rel: bytes  # the dir's path in the tree, b"" for the root
    below: list[int]  # the lowers (LowerWalk indexes) holding it as a dir, top first
    source: os.stat_result  # its topmost copy's attributes, applied once it is full
    xattrs: tuple[tuple[str, bytes], ...]
    todo: list[bytes] = field(default_factory=list)  # names still to copy, last first


def copy_merged(lowers: Sequence[Path], target: Path,
                hollow: frozenset[bytes] = frozenset()) -> None:
    """Fill the empty dir `target` with the merged view of the layer dirs `lowers` (top
    first; none: an empty root)."""
    walk = LowerWalk([os.fsencode(p) for p in lowers])
    fd = os.open(target, _DIR_FLAGS)
    copier = _Copier(fd)
    try:
        below = walk.all()
        top = _top_dir(walk, below)
        stack = [_Frame(b"", below, *top, todo=_names(walk, below))]
        while stack:
            frame = stack[-1]
            if not frame.todo:
                stack.pop()
                _apply(fd, frame.source, frame.xattrs)
                if stack:
                    fd = copier.move(b"..")
                    walk.up(frame.below)
                continue
            name = frame.todo.pop()
            rel = frame.rel + b"/" + name if frame.rel else name
            hit, dirs = walk.look(frame.below, name)
            if hit is None:
                continue  # whited out
            path, st = hit
            if not stat.S_ISDIR(st.st_mode):
                copier.nondir(path, st, name, rel)
                continue
            os.mkdir(name, 0o700, dir_fd=fd)
            xattrs = kept_xattrs(read_xattrs(path))
            fd = copier.move(name)
            walk.down(dirs, name)
            todo = [] if rel in hollow else _names(walk, dirs)
            stack.append(_Frame(rel, dirs, st, xattrs, todo))
    except OSError as exc:
        raise LayerError(f"cannot copy the image's files for the step: {exc.strerror or exc}",
                         hint=_hint(exc.errno)) from exc
    finally:
        copier.close()
        walk.close()


def _hint(err: int | None) -> str | None:
    if err in (errno.EPERM, errno.EACCES):
        return ("the image holds a device node or a trusted.* xattr, which this process may"
                " not make (CAP_MKNOD, CAP_SYS_ADMIN)")
    return None


def _top_dir(walk: LowerWalk, below: list[int]
             ) -> tuple[os.stat_result, tuple[tuple[str, bytes], ...]]:
    """The attributes of the root: its topmost layer's root dir (0755 root-owned if none)."""
    paths = walk.paths(below)
    if not paths:  # as an overlay's empty lower dir shows it, but for the time
        return os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0,
                               0, 0, 0)), ()
    return os.stat(paths[0]), kept_xattrs(read_xattrs(paths[0] + b"/."))


def _names(walk: LowerWalk, below: list[int]) -> list[bytes]:
    """The names in the lowers `below` of the current dir, merged, sorted last first; the
    lookup of each one says whether it is visible."""
    names: set[bytes] = set()
    for path in walk.paths(below):
        names.update(os.fsencode(n) for n in os.listdir(path))
    return sorted(names, reverse=True)


def _apply(fd: int, st: os.stat_result, xattrs: tuple[tuple[str, bytes], ...]) -> None:
    """A directory's attributes: owner, mode (after chown), xattrs, mtime."""
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    for key, value in xattrs:
        os.setxattr(fd, key, value)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


class _Copier:
    """Writes non-directories into the current target dir; keeps hard links."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.root = os.dup(fd)
        self._links: dict[tuple[int, int], bytes] = {}  # (dev, ino) of a source → first copy

    def move(self, name: bytes) -> int:
        self.fd = _move(self.fd, name)
        return self.fd

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.root)

    def nondir(self, source: bytes, st: os.stat_result, name: bytes, rel: bytes) -> None:
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFSOCK:
            return
        if st.st_nlink > 1 and self._link(st, name, rel):
            return
        if kind == stat.S_IFREG:
            self._file(source, st, name)
        elif kind == stat.S_IFLNK:
            os.symlink(os.readlink(source), name, dir_fd=self.fd)
        else:  # a fifo or a device
            os.mknod(name, kind | 0o600, st.st_rdev, dir_fd=self.fd)
        self._attributes(source, st, name, kind == stat.S_IFLNK)

    def _link(self, st: os.stat_result, name: bytes, rel: bytes) -> bool:
        first = self._links.setdefault((st.st_dev, st.st_ino), rel)
        if first == rel:
            return False
        try:
            os.link(first, name, src_dir_fd=self.root, dst_dir_fd=self.fd,
                    follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:  # a path too deep to name: copy it instead
                raise
            return False
        return True

    def _file(self, source: bytes, st: os.stat_result, name: bytes) -> None:
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
            try:
                _copy_data(src, dst, st.st_size)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _attributes(self, source: bytes, st: os.stat_result, name: bytes,
                    symlink: bool) -> None:
        os.chown(name, st.st_uid, st.st_gid, dir_fd=self.fd, follow_symlinks=False)
        if not symlink:  # a symlink's mode means nothing (and lchmod does not exist)
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=self.fd)
        path = b"/proc/self/fd/%d/%s" % (self.fd, name)
        for key, value in kept_xattrs(read_xattrs(source)):  # after chown: it drops caps
            os.setxattr(path, key, value, follow_symlinks=False)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=self.fd,
                 follow_symlinks=False)


def _copy_data(src: int, dst: int, size: int) -> None:
    """In the kernel where it can (copy_file_range: a reflink on btrfs and xfs), else read
    and write."""
    left = size
    try:
        while left > 0:
            done = os.copy_file_range(src, dst, min(left, 1 << 30))
            if done == 0:
                break
            left -= done
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while chunk := os.read(src, _CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]


def _move(fd: int, name: bytes) -> int:
    moved = os.open(name, _DIR_FLAGS, dir_fd=fd)
    os.close(fd)
    return moved
