"""Cache mounts in the store: instances and locks per sharing mode, owner/mode/seed of a new
one, what the observer (the team cache) hears and offers, and pruning."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from stepbuild.build.mounts.cache import acquire_cache, cache_mounts_dir, prune_cache_mounts
from stepbuild.build.mounts.plan import PlannedMount
from stepbuild.store.layout import cache_mount_name
from stepbuild.store.store import Store


def cache_mount(sharing: str, **kwargs: Any) -> PlannedMount:
    identity = {"id": "c", **kwargs}
    return PlannedMount("cache", "/c", {}, cache_id="c", identity=identity, sharing=sharing,
                        **kwargs)


def notes() -> list[str]:
    return []


def test_private_cache_takes_a_free_instance(tmp_path: Path) -> None:
    seen: list[str] = []
    with ExitStack() as first, ExitStack() as second:
        one = acquire_cache(tmp_path, cache_mount("private"), first, seen.append, None)
        two = acquire_cache(tmp_path, cache_mount("private"), second, seen.append, None)
        assert (one.name, two.name) == ("data", "data.1")
        assert seen == ["cache mount c: busy, using private instance 1"]
    with ExitStack() as third:
        assert acquire_cache(tmp_path, cache_mount("private"), third, seen.append,
                             None).name == "data"


def test_locked_cache_waits_for_the_holder(tmp_path: Path) -> None:
    seen: list[str] = []
    order: list[str] = []
    with ExitStack() as holder:
        acquire_cache(tmp_path, cache_mount("locked"), holder, seen.append, None)

        def second() -> None:
            with ExitStack() as stack:
                acquire_cache(tmp_path, cache_mount("locked"), stack, seen.append, None)
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        while not seen:  # the second one says it waits before it blocks
            threading.Event().wait(0.01)
        order.append("first released")
    thread.join(timeout=10)
    assert order == ["first released", "second"]
    assert "waiting for its lock" in seen[0]


def test_shared_cache_does_not_wait(tmp_path: Path) -> None:
    with ExitStack() as a, ExitStack() as b:
        assert acquire_cache(tmp_path, cache_mount("shared"), a, notes().append, None) == \
            acquire_cache(tmp_path, cache_mount("shared"), b, notes().append, None)


def test_new_cache_gets_owner_and_mode_and_seed(tmp_path: Path) -> None:
    def seed(into: Path) -> None:
        (into / "seeded").write_text("x")

    with ExitStack() as stack:
        mount = cache_mount("shared", uid=123, gid=45, mode=0o710)
        instance = acquire_cache(tmp_path, mount, stack, notes().append, seed)
    st = instance.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (123, 45, 0o710)
    assert (instance / "seeded").exists()
    assert instance.parent.name == cache_mount_name(mount.identity)
    assert not [p for p in instance.parent.iterdir() if p.name.startswith("new-")]


def test_prune_cache_mounts(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with ExitStack() as stack:
        instance = acquire_cache(store.root, cache_mount("shared"), stack, notes().append, None)
    (instance / "ro").mkdir()
    (instance / "ro" / "f").write_text("x")
    (instance / "ro").chmod(0o555)
    assert prune_cache_mounts(store) == 1
    assert list(cache_mounts_dir(store.root).iterdir()) == []
    assert not list(store.root.rglob("f"))  # deleted, not only moved aside
    assert prune_cache_mounts(store) == 0



class Observer:
    """Records what it hears; offers `seed` for a new cache."""

    def __init__(self, seed: Any = None) -> None:
        self.seed = seed
        self.used: list[tuple[Path, str, Path]] = []
        self.asked: list[str] = []

    def cache_mount_planned(self, p: PlannedMount) -> None:
        raise AssertionError("acquiring a cache is not planning it")

    def cache_mount_used(self, store_root: Path, p: PlannedMount, base: Path) -> None:
        self.used.append((store_root, p.cache_id, base))

    def cache_mount_seed(self, store_root: Path, p: PlannedMount) -> Any:
        self.asked.append(p.cache_id)
        return self.seed


def test_the_observer_hears_of_each_use_and_seeds_only_a_new_main_instance(
        tmp_path: Path) -> None:
    def from_team(into: Path) -> None:
        (into / "from-team").write_text("x")

    observer = Observer(from_team)
    mount = cache_mount("private")
    base = cache_mounts_dir(tmp_path) / cache_mount_name(mount.identity)
    with ExitStack() as first, ExitStack() as second:
        one = acquire_cache(tmp_path, mount, first, notes().append, None, observer)
        two = acquire_cache(tmp_path, mount, second, notes().append, None, observer)
    assert (one / "from-team").exists() and not (two / "from-team").exists()  # data.1: empty
    with ExitStack() as third:
        acquire_cache(tmp_path, mount, third, notes().append, None, observer)  # exists now
    assert observer.used == [(tmp_path, "c", base)] * 3
    assert observer.asked == ["c"]


def test_a_seed_of_the_step_wins_over_the_observers(tmp_path: Path) -> None:
    def from_stage(into: Path) -> None:
        (into / "from-stage").write_text("x")

    observer = Observer(None)
    with ExitStack() as stack:
        instance = acquire_cache(tmp_path, cache_mount("shared"), stack, notes().append,
                                 from_stage, observer)
    assert (instance / "from-stage").exists() and observer.asked == []
