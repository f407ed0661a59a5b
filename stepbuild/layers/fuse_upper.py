"""fuse-overlayfs's upper dir → the kernel overlay's, before the layer is captured.

A rootless builder whose kernel refuses overlay mounts with fuse-overlayfs (sandbox/host.py).
Its upper dir records the same changes in other forms (fuse-overlayfs 1.10, seen here):

- every directory it makes is opaque, whether or not anything was below it: the
  `user.fuseoverlayfs.opaque` xattr, plus a `.wh..wh..opq` file and a `.wh..opq` whiteout in
  it. The kernel marks a dir opaque only where it replaces one below (`user.overlay.opaque`);
- a removed dir or file leaves a whiteout even where nothing below needs hiding (the kernel
  leaves none there, and `check --deep` would find it extra): those go;
- a copied-up file carries `user.fuseoverlayfs.origin`; kernel state is not kept (metacopy,
  index are off);
- a dir copied up to hold a changed child gets the time of the copy-up, where the kernel
  keeps the lower dir's mtime (so capture leaves it out as only copied up).

`normalise(upper, lowers)` rewrites those into the kernel's forms, so that capture, the layer
dir later steps read, and `check --deep` see what a kernel overlay would have left: the same
layer digest either way. Whiteouts are the kernel's already (0/0 character devices).

The mtime of a dir whose names all still exist below (only contents, modes or owners of what
was there changed: no entry made or removed in it) is set back to the lower dir's, as the
kernel's copy-up keeps it; a step that only `touch`ed such a dir loses that mtime change.

One descriptor on the upper dir goes down by name and up by `..` (the upper dir is ours
alone), the lowers follow with `LowerWalk`: any depth, no path past PATH_MAX.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stepbuild.fs.trees import move_dir_fd
from stepbuild.layers.overlayfs import LowerWalk, fd_path, is_whiteout, opaque_xattr, read_xattrs

__all__ = ["normalise"]

_STATE_PREFIX = "user.fuseoverlayfs."
_OPAQUE = _STATE_PREFIX + "opaque"
_MARKER_FILE = ".wh..wh..opq"  # a regular file in each dir it made
_MARKER_WHITEOUT = ".wh..opq"  # a 0/0 whiteout beside it
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class _Dir:
    """A directory of the upper dir being rewritten."""

    todo: list[_Sub]  # subdirs still to visit, last first
    below: list[int]  # the lowers (LowerWalk indexes) the dir is merged with


@dataclass(frozen=True, slots=True)
class _Sub:
    name: str
    below: list[int]  # the lowers it is merged with (none if opaque)
    opaque: bool  # made opaque by fuse-overlayfs: its markers are to go


def normalise(upper: Path, lowers: Sequence[Path]) -> None:
    """Rewrite fuse-overlayfs's forms in the unmounted upper dir `upper` (over `lowers`, top
    first) into the kernel overlay's."""
    walk = LowerWalk([os.fsencode(p) for p in lowers])
    fd = os.open(upper, _DIR_FLAGS)
    try:
        opaque = _settle(os.fsencode(upper), bool(lowers))
        below = [] if opaque else walk.all()
        stack = [_Dir(_fix_dir(fd, _Sub("", below, opaque), walk, None), below)]
        while stack:
            top = stack[-1]
            if not top.todo:
                stack.pop()
                if stack:
                    fd = move_dir_fd(fd, "..")
                    walk.up(top.below)
                continue
            sub = top.todo.pop()
            fd = move_dir_fd(fd, sub.name)
            walk.down(sub.below, os.fsencode(sub.name))
            lower = walk.paths(sub.below)[0] if sub.below else None
            stack.append(_Dir(_fix_dir(fd, sub, walk, lower), sub.below))
    finally:
        os.close(fd)
        walk.close()


def _settle(path: bytes, over_a_dir: bool) -> bool:
    """Drop fuse-overlayfs's xattrs from `path`; an opaque dir keeps the kernel's opaque
    xattr only `over_a_dir` (a lower dir it hides). Whether it was opaque."""
    xattrs = read_xattrs(path)
    for name in xattrs:
        if name.startswith(_STATE_PREFIX):
            os.removexattr(path, name, follow_symlinks=False)
    opaque = xattrs.get(_OPAQUE) == b"y"
    if opaque and over_a_dir:
        os.setxattr(path, opaque_xattr(), b"y", follow_symlinks=False)
    return opaque


def _fix_dir(fd: int, this: _Sub, walk: LowerWalk, lower: bytes | None) -> list[_Sub]:
    """The entries of the upper dir `fd` rewritten, and its mtime as the kernel would have
    left it (`lower`: the top lower dir it is merged with, if any). Its subdirs, last first."""
    before = os.fstat(fd)
    removed = this.opaque and _drop_markers(fd)
    subdirs, names_kept = [], True
    for name in sorted(os.listdir(fd)):
        st = os.lstat(name, dir_fd=fd)
        hit, dirs = walk.look(this.below, os.fsencode(name))
        if hit is None and is_whiteout(st):
            os.unlink(name, dir_fd=fd)  # it hides nothing (a dir made and removed again)
            removed, names_kept = True, False
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        lower_dir = hit is not None and stat.S_ISDIR(hit[1].st_mode)
        opaque = _settle(fd_path(fd, os.fsencode(name)), is_dir and lower_dir)
        # The same name of the same kind below, not replaced: nothing made or removed here.
        names_kept = names_kept and hit is not None and not opaque and (
            stat.S_IFMT(st.st_mode) == stat.S_IFMT(hit[1].st_mode))
        if is_dir:
            subdirs.append(_Sub(name, [] if opaque else dirs, opaque))
    if lower is not None and names_kept:
        low = os.stat(lower)  # a /proc/self/fd link: followed to the dir
        os.utime(fd, ns=(low.st_atime_ns, low.st_mtime_ns))
    elif removed:
        os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
    subdirs.reverse()
    return subdirs


def _drop_markers(fd: int) -> bool:
    """Remove the two entries fuse-overlayfs puts in a dir it made opaque; whether any was."""
    removed = False
    for name, wanted in ((_MARKER_FILE, stat.S_ISREG), (_MARKER_WHITEOUT, stat.S_ISCHR)):
        try:
            st = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            continue
        if wanted(st.st_mode) and (st.st_size == 0 if stat.S_ISREG(st.st_mode)
                                   else is_whiteout(st)):
            os.unlink(name, dir_fd=fd)
            removed = True
    return removed
