"""Advisory locks: flock(2) on a lock file (or on a directory itself), held for a `with` block.

flock, not POSIX `lockf`/`fcntl` record locks: a record lock belongs to the process, and all
of them are dropped when it closes *any* descriptor of the file (fcntl(2), "Advisory record
locking"); a flock belongs to its open file description, so each holder holds exactly its own
(`Store.lock` gives the whole reasoning, NFS included). Locks vanish with the process: a crash
never leaves one held.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["flocked"]


@contextmanager
def flocked(path: Path, *, exclusive: bool, wait: bool = True, mode: int = 0o600,
            directory: bool = False) -> Iterator[bool]:
    """Hold a shared or `exclusive` flock on `path` for the block, which gets True.

    The lock file is made (with `mode`) if missing, and never opened through a symlink.
    With `directory` the (existing) directory `path` is locked itself, symlinks followed: a
    layout's own lock, with no lock file to leave in it. With `wait=False` a lock that
    someone else holds is not waited for: the block gets False and holds nothing.
    """
    if directory:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    if not _flock(fd, operation):
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)  # the only descriptor of its open file description: this unlocks


def _flock(fd: int, operation: int) -> bool:
    """flock(fd); False if LOCK_NB found the lock taken. `fd` is closed unless True."""
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        os.close(fd)
        return False
    except BaseException:
        os.close(fd)
        raise
    return True
