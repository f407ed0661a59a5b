"""teamcache/local.py's tidying: inventory, delete and the lock an export holds.

A real directory (the lock is a real flock): the records' `used` stamps and `writer` decide
last use and a writer's newest export; blobs go with their last record; a blob no record
names goes only past ORPHAN_GRACE (an export by an older stepbuild may be between a blob and
its record); a prune cannot take the lock while an export holds it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from stepbuild.fs.locks import flocked
from stepbuild.teamcache.local import ORPHAN_GRACE, LocalDir
from stepbuild.teamcache.prune import Policy, plan
from stepbuild.teamcache.records import CacheError, make_record, stamp

NOW = 1_800_000_000.0


def add_key(cache: LocalDir, key: str, data: bytes | None, used: float, writer: str) -> str:
    """A record for `key` (with a blob of `data`), exported at `used` by `writer`."""
    layer, diff_id = None, None
    if data is not None:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob = cache.root / "blobs" / "sha256" / digest.split(":")[1]
        blob.write_bytes(data)
        os.utime(blob, (used, used))
        layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                 "digest": digest, "size": len(data)}
        diff_id = digest
    cache.put_record(key, make_record(key, diff_id, layer, "2023-11-14T22:13:20Z",
                                      f"RUN {key}", used=stamp(used), writer=writer))
    return layer["digest"] if layer else ""


@pytest.fixture
def cache(tmp_path: Path) -> LocalDir:
    shared = LocalDir(tmp_path / "shared")
    shared.prepare()
    shared.finish()
    return shared


def test_inventory_reads_last_use_and_newest_exports(cache: LocalDir) -> None:
    add_key(cache, "a1", b"one", NOW - 300, "writer-a")
    add_key(cache, "a2", b"two", NOW - 100, "writer-a")
    add_key(cache, "b1", None, NOW - 200, "writer-b")
    found = {e.name: e for e in cache.inventory()}
    assert {n: (e.used, e.newest, e.writers) for n, e in found.items()} == {
        "a1": (NOW - 300, False, ("writer-a",)),
        "a2": (NOW - 100, True, ("writer-a",)),
        "b1": (NOW - 200, True, ("writer-b",))}
    assert found["a1"].size == 3 and found["b1"].blobs == ()


def test_a_record_without_a_stamp_was_last_used_when_its_file_was_written(
        cache: LocalDir) -> None:
    record = make_record("old", None, None, "2023-11-14T22:13:20Z", "RUN old")
    cache.put_record("old", record)
    os.utime(cache.root / "keys" / "old.json", (NOW - 5, NOW - 5))
    [entry] = cache.inventory()
    assert entry.used == NOW - 5 and not entry.newest and entry.writers == ()


def test_delete_removes_dropped_records_and_their_blobs_only(cache: LocalDir) -> None:
    gone = add_key(cache, "old", b"old layer", NOW - 1000, "w")
    shared_blob = add_key(cache, "old-shared", b"shared", NOW - 1000, "w")
    add_key(cache, "new", b"shared", NOW - 10, "w")  # names the same blob
    with cache.locked(exclusive=True):
        outcome = plan(cache.inventory(), Policy(until=NOW - 500))
        assert cache.delete(outcome, NOW) == len(b"old layer")
    assert sorted(p.stem for p in (cache.root / "keys").iterdir()) == ["new"]
    blobs = {"sha256:" + p.name for p in (cache.root / "blobs" / "sha256").iterdir()}
    assert blobs == {shared_blob} and gone not in blobs


def test_an_orphan_blob_goes_only_past_the_grace_period(cache: LocalDir) -> None:
    blobs = cache.root / "blobs" / "sha256"
    young, old = blobs / ("1" * 64), blobs / ("2" * 64)
    for path, age in ((young, 60), (old, ORPHAN_GRACE + 60)):
        path.write_bytes(b"x" * 10)
        os.utime(path, (NOW - age, NOW - age))
    assert cache.orphans([], NOW) == {"sha256:" + "2" * 64: 10}
    with cache.locked(exclusive=True):
        assert cache.delete(plan([], Policy()), NOW) == 10
    assert young.exists() and not old.exists()


def test_an_export_holds_off_a_prune(cache: LocalDir) -> None:
    cache.prepare()  # an export in progress: shared lock on the dir
    with flocked(cache.root, exclusive=True, wait=False, directory=True) as got:
        assert not got
    cache.finish()
    with flocked(cache.root, exclusive=True, wait=False, directory=True) as got:
        assert got


def test_a_missing_directory_is_a_cache_error(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="no team cache directory"), \
            LocalDir(tmp_path / "none").locked(exclusive=False):
        pass
