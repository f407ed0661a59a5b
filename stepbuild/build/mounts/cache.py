"""Cache mounts in the store: `<store>/cache-mounts/<hash of the identity>/`.

Each cache dir holds `meta.json` (which cache it is, for people looking at the store), the
main instance `data/` and, for `sharing=private`, further instances `data.1/`, `data.2/`...,
each with a `.lock` file beside it that users flock: shared for `sharing=shared`, exclusive
for `locked` (a second user waits) and `private` (a second user takes the next instance).
A new instance is made beside its final name and renamed into place, so no one ever sees a
half-seeded cache. The sharing modes are BuildKit's: see the package docstring.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from stepbuild.build import keys
from stepbuild.build.mounts.plan import PlannedMount
from stepbuild.fs.durable import write_file
from stepbuild.fs.locks import flocked
from stepbuild.fs.trees import remove_tree
from stepbuild.store.layout import StoreLayout

if TYPE_CHECKING:
    from stepbuild.store.store import Store


class CacheMountObserver(Protocol):
    """Told about the cache mounts of one build, by its planning and its steps: the build's
    team cache, which exports and imports them. It lives as long as the build, which hands
    it to `plan.Sources` and `realise.realised` (build/run.py); nothing here keeps it."""

    def cache_mount_planned(self, p: PlannedMount) -> None:
        """A RUN of the build declared the cache mount `p` (the step runs or hits)."""

    def cache_mount_used(self, store_root: Path, p: PlannedMount, base: Path) -> None:
        """A step holds the lock on an instance of the cache `p`, whose dir is `base`."""

    def cache_mount_seed(self, store_root: Path, p: PlannedMount
                         ) -> Callable[[Path], None] | None:
        """For the main instance of a cache that does not exist yet and has no `from`: a
        callable that fills the new (temporary) instance dir, or None to start it empty."""


def cache_mounts_dir(store_root: Path) -> Path:
    return StoreLayout(Path(store_root)).cache_mounts  # the store names its folders


def acquire_cache(store_root: Path, p: PlannedMount, stack: ExitStack,
                  note: Callable[[str], None], seed: Callable[[Path], None] | None,
                  observer: CacheMountObserver | None = None) -> Path:
    """The instance dir of the cache `p` for this step, locked as its sharing mode says until
    `stack` closes; created (and seeded with `seed`, else with what `observer` offers) if
    new. `observer` hears of the cache once its lock is held."""
    base = StoreLayout(Path(store_root)).cache_mount(p.identity)
    base.parent.mkdir(mode=0o700, exist_ok=True)
    base.mkdir(mode=0o700, exist_ok=True)
    _write_meta(base, p)
    name = _lock_instance(base, p, note, stack)
    instance = base / name
    if observer is not None:
        observer.cache_mount_used(store_root, p, base)
    if not instance.is_dir():
        if seed is None and name == "data" and observer is not None:
            seed = observer.cache_mount_seed(store_root, p)  # maybe the team cache has it
        _create_instance(base, instance, p, seed)
    return instance


def _lock_instance(base: Path, p: PlannedMount, note: Callable[[str], None],
                   stack: ExitStack) -> str:
    """The instance's name, its lock held (as `p.sharing` says) until `stack` closes."""
    if p.sharing == "private":
        number = 0
        while not stack.enter_context(flocked(base / f"{_instance(number)}.lock",
                                              exclusive=True, wait=False)):
            number += 1
        if number:
            note(f"cache mount {p.cache_id}: busy, using private instance {number}")
        return _instance(number)
    exclusive = p.sharing == "locked"
    if not stack.enter_context(flocked(base / "data.lock", exclusive=exclusive, wait=False)):
        note(f"cache mount {p.cache_id}: waiting for its lock (sharing={p.sharing})")
        stack.enter_context(flocked(base / "data.lock", exclusive=exclusive))
    return "data"


def _instance(number: int) -> str:
    return "data" if number == 0 else f"data.{number}"


def _create_instance(base: Path, instance: Path, p: PlannedMount,
                     seed: Callable[[Path], None] | None) -> None:
    """Make a new cache instance beside its final name, then rename it into place; a
    concurrent creator (sharing=shared) that wins the rename makes ours redundant."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="new-", dir=base))
    try:
        if seed is not None:
            seed(tmp)
        os.chown(tmp, p.uid or 0, p.gid or 0)
        os.chmod(tmp, 0o755 if p.mode is None else p.mode)
        try:
            os.rename(tmp, instance)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    finally:
        if tmp.exists():
            remove_tree(tmp, best_effort=True)


def _write_meta(base: Path, p: PlannedMount) -> None:
    """`meta.json`: which cache this is, for people looking at the store."""
    meta = base / "meta.json"
    if meta.exists():
        return
    data = keys.canonical({"id": p.cache_id, "identity": p.identity}) + b"\n"
    write_file(meta, data, None, durable=False)


def prune_cache_mounts(store: Store) -> int:
    """Delete every cache mount of the store; return how many. Takes the store lock
    exclusively (builds hold it shared), so no build is using one meanwhile. Each is renamed
    into tmp/ first, so a crash mid-delete leaves no half cache under a real name."""
    directory = cache_mounts_dir(store.root)
    removed = 0
    with store.lock(exclusive=True):
        if not directory.is_dir():
            return 0
        for entry in sorted(os.listdir(directory)):
            doomed = store.tmp_dir("cache-mount-") / "gone"
            os.rename(directory / entry, doomed)
            remove_tree(doomed.parent)
            removed += 1
    return removed
