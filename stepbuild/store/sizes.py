"""Sizes of files and trees as du(1) counts them: allocated blocks, hard links once.

`Size(disk, apparent)`: `disk` is st_blocks × 512 (what the file system spends, what `du`
prints), `apparent` the sum of st_size (what `du --apparent-size` prints). A `Sizer` remembers
every multiply linked inode it counted, so a file linked from two places is counted once per
`Sizer`. Trees are walked with one descriptor whatever their depth (fs/trees.walk_tree), never
following symlinks. Reads only; an entry that vanishes mid-walk counts as nothing.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from stepbuild.fs.trees import UNLIMITED, walk_tree

__all__ = ["Size", "Sizer"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Size:
    """Bytes on disk (allocated blocks) and apparent bytes (file sizes)."""

    disk: int = 0
    apparent: int = 0

    def __add__(self, other: Size) -> Size:
        return Size(self.disk + other.disk, self.apparent + other.apparent)

    def __sub__(self, other: Size) -> Size:
        return Size(self.disk - other.disk, self.apparent - other.apparent)


@dataclass(slots=True)
class Sizer:
    """Measures paths; counts each multiply linked inode once over all its calls."""

    _seen: set[tuple[int, int]] = field(default_factory=set)
    _disk: int = 0
    _apparent: int = 0

    def measure(self, path: Path) -> Size:
        """The size of `path`: a file, or a directory and everything under it (0 if absent)."""
        self._disk = self._apparent = 0
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return Size()
        self._count(info)
        if stat.S_ISDIR(info.st_mode):
            with suppress(FileNotFoundError, NotADirectoryError):
                walk_tree(os.open(path, _DIR_FLAGS), UNLIMITED, self._visit, self._visit)
        return Size(self._disk, self._apparent)

    def _visit(self, dir_fd: int, name: str) -> None:
        with suppress(FileNotFoundError):
            self._count(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))

    def _count(self, info: os.stat_result) -> None:
        if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
            inode = (info.st_dev, info.st_ino)
            if inode in self._seen:
                return
            self._seen.add(inode)
        self._disk += info.st_blocks * 512
        self._apparent += info.st_size
