"""The work that dead builders left in a store: found by the owner tag in its names.

A builder writes under tmp/ and stages layer dirs as `layers/<hex>.tmp-*`, with its owner tag
in every name (`fs/owner.py`). Killed (SIGKILL, the OOM killer, a crash), it cannot remove
them; its overlay mounts are gone with it (they live in its private mount namespace, and the
sandbox child dies with its parent). The next command to take the store lock removes what
such dead owners left (`Store.lock`); `stepbuild check` lists it first, with sizes. Live
builders' work, and work without an owner tag, is never touched here: `gc.prune` takes that
after its grace period.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from stepbuild.fs.owner import is_dead_work
from stepbuild.fs.trees import remove_tree, walk_tree
from stepbuild.store.layout import StoreLayout

__all__ = ["StaleWork", "clear_dead_work", "dead_work"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class StaleWork:
    """One leftover of a dead builder: its path and the bytes it holds on disk."""

    path: Path
    size: int


def dead_work(layout: StoreLayout) -> list[StaleWork]:
    """What dead builders left under tmp/ and layers/, with sizes, sorted by path."""
    return [StaleWork(path, disk_usage(path)) for path in _dead_paths(layout)]


def clear_dead_work(layout: StoreLayout) -> int:
    """Remove what dead builders left; the number of entries removed. Best effort: an entry
    that will not go stays garbage for `prune` and `check` (never an error here)."""
    paths = _dead_paths(layout)
    for path in paths:
        remove_tree(path, best_effort=True)
    return len(paths)


def _dead_paths(layout: StoreLayout) -> list[Path]:
    found = []
    for parent in (layout.tmp, layout.layers):
        with suppress(FileNotFoundError), os.scandir(parent) as entries:
            found += [Path(e.path) for e in entries if is_dead_work(e.name)]
    return sorted(found)


def disk_usage(path: Path) -> int:
    """The bytes the file or tree `path` takes on disk (as `du` counts them); 0 if gone."""
    try:
        st = os.lstat(path)
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return 0
    except NotADirectoryError:
        return st.st_blocks * 512
    total = st.st_blocks * 512

    def add(dir_fd: int, name: str) -> None:
        nonlocal total
        with suppress(FileNotFoundError):
            total += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_blocks * 512

    walk_tree(fd, 1 << 20, on_file=add, on_dir_done=add)
    return total
