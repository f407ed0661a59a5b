"""Mount points made in an image for a step's mounts, and their removal after the step.

A --mount target the image lacks needs a mount point; it is made in the step's overlay (so
in its upper dir) and removed again when the step is done, unless the step used it, so that
a mount never leaves anything in a layer.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stepbuild.errors import BuildError
from stepbuild.fs import rootpath


@dataclass(slots=True)
class _Made:
    """One stub: `name` in the directory `parent_fd` (ours, open), its inode, and for the
    first one made in an existing directory, that directory's times before and after."""

    parent_fd: int
    name: str
    ino: int
    is_dir: bool
    times: tuple[int, int] | None = None
    mtime_after: int = 0


class Stubs:
    """Mount points made in the image for mounts whose target it lacks, and their removal.

    Made by walking the target inside the root (`rootpath`: symlinks in the image resolve
    inside it), removed through the directory fds kept from that walk, never by path: a step
    that moves or replaces a directory cannot make us remove anything but our own stubs.
    """

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.made: list[_Made] = []
        self.fds: list[int] = []

    def make(self, target: str, kind: str, hops: int = 0) -> None:
        """Make `target` (and missing parents) as a `kind` "dir" or "file" unless it exists.

        A dangling symlink on the way is followed inside the root, and what it points to is
        made there (contain, don't reject: docs/security.md rule 2), as Docker would.
        """
        try:
            os.close(rootpath.open_in_root(self.root_fd, target, os.O_PATH))
            return  # the image has it
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BuildError(f"mount target {target}: {exc.strerror}") from None
        parts = target.strip("/").split("/")
        depth, parent = self._deepest(target, parts)
        st = os.fstat(parent)
        for number, name in enumerate(parts[depth:]):
            link = _readlink_at(parent, name)
            if link is not None:
                if hops >= rootpath.MAX_SYMLINKS:
                    raise BuildError(f"mount target {target}: too many symlinks")
                here = "/" + "/".join(parts[:depth + number])
                self.make(posixpath.join(here, link, *parts[depth + number + 1:]), kind,
                          hops + 1)
                return
            is_dir = depth + number < len(parts) - 1 or kind == "dir"
            self._create(parent, name, is_dir, target)
            made = _Made(parent, name, os.stat(name, dir_fd=parent, follow_symlinks=False).st_ino,
                         is_dir)
            if number == 0:
                made.times = (st.st_atime_ns, st.st_mtime_ns)
                made.mtime_after = os.fstat(parent).st_mtime_ns
            self.made.append(made)
            if is_dir:
                parent = self._open(os.open, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                    | os.O_CLOEXEC, dir_fd=parent)

    def _open(self, opener: Callable[..., int], *args: Any, **kwargs: Any) -> int:
        fd = opener(*args, **kwargs)
        self.fds.append(fd)
        return fd

    def _deepest(self, target: str, parts: list[str]) -> tuple[int, int]:
        """(number of leading components that exist, an fd of the directory they lead to)."""
        for depth in range(len(parts) - 1, -1, -1):
            try:
                return depth, self._open(rootpath.open_in_root, self.root_fd,
                                         "/" + "/".join(parts[:depth]),
                                         os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise BuildError(f"mount target {target}: {exc.strerror}") from None
        raise BuildError(f"mount target {target}: the image has no root directory")

    @staticmethod
    def _create(parent: int, name: str, is_dir: bool, target: str) -> None:
        if name in (".", ".."):
            raise BuildError(f"mount target {target}: cannot make {name!r} below a missing"
                             " directory")
        try:
            if is_dir:
                os.mkdir(name, 0o700, dir_fd=parent)
                os.chmod(name, 0o755, dir_fd=parent, follow_symlinks=False)
            else:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o644, dir_fd=parent))
        except FileExistsError:
            raise BuildError(f"mount target {target}: {name!r} appeared while the mount point"
                             " was being made") from None

    def remove(self) -> None:
        """Remove the stubs still empty and ours, newest first; restore the times of the
        directory that held them if the step did not change it meanwhile."""
        try:
            for made in reversed(self.made):
                before = os.fstat(made.parent_fd).st_mtime_ns
                if self._remove_one(made) and made.times is not None and (
                        before == made.mtime_after):
                    os.utime(made.parent_fd, ns=made.times)
        finally:
            for fd in self.fds:
                os.close(fd)
            self.made.clear()
            self.fds.clear()

    @staticmethod
    def _remove_one(made: _Made) -> bool:
        try:
            st = os.stat(made.name, dir_fd=made.parent_fd, follow_symlinks=False)
            if st.st_ino != made.ino:
                return False
            if made.is_dir and stat.S_ISDIR(st.st_mode):
                os.rmdir(made.name, dir_fd=made.parent_fd)
            elif not made.is_dir and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(made.name, dir_fd=made.parent_fd)
            else:
                return False
        except OSError:
            return False  # not empty any more (the step wrote there): keep it
        return True


def _readlink_at(dir_fd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None  # missing, or not a symlink
