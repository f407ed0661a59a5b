"""Deep directory trees for the tests of issue 11 item 11 (every walk handles 10,000 levels).

`nest` builds a chain `d/d/…/d` one mkdir at a time relative to an open dir fd (a path that
deep is over PATH_MAX, and os.makedirs recurses). `fast_tmp_dir` places them on tmpfs when the
machine has one: rmdir on a busy ext4 disk costs about a millisecond each, so one 10,000-level
tree would take seconds to delete there and the suite must stay fast.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stepbuild.fs.trees import remove_tree

LEVELS = 10_000
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SHM = Path("/dev/shm")


def nest(top: Path, levels: int = LEVELS, *, leaf: bytes | None = b"bottom\n") -> None:
    """`top/d/d/…` `levels` dirs deep, with a file `f` holding `leaf` at the bottom."""
    fd = os.open(top, _DIR)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            down = os.open("d", _DIR, dir_fd=fd)
            os.close(fd)
            fd = down
        if leaf is not None:
            out = os.open("f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
            os.write(out, leaf)
            os.close(out)
    finally:
        os.close(fd)


def chain_depth(top: Path) -> tuple[int, bytes | None]:
    """How many `d` dirs are nested under `top`, and the bottom `f`'s bytes (None if none)."""
    fd, depth = os.open(top, _DIR), 0
    try:
        while True:
            try:
                down = os.open("d", _DIR, dir_fd=fd)
            except FileNotFoundError:
                break
            os.close(fd)
            fd, depth = down, depth + 1
        try:
            leaf = os.open("f", os.O_RDONLY, dir_fd=fd)
        except FileNotFoundError:
            return depth, None
        with open(leaf, "rb") as f:
            return depth, f.read()
    finally:
        os.close(fd)


@contextmanager
def fast_tmp_dir(fallback: Path) -> Iterator[Path]:
    """A fresh dir on tmpfs (/dev/shm) if it is writable, else under `fallback`; deleted
    after, whatever its depth."""
    parent = _SHM if os.access(_SHM, os.W_OK) else fallback
    path = Path(tempfile.mkdtemp(prefix="stepbuild-deep-", dir=parent))
    try:
        yield path
    finally:
        remove_tree(path)
