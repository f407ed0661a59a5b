"""teamcache/local.py: a shared cache dir is written by teammates, so what it holds is untrusted.

docs/security.md family K (a poisoned team cache) with D (a FIFO or a symlink where a record or
blob should be) and E (a record far larger than any real one). Each is a `CacheError`, which
`TeamCache` reports as a warning and a miss, and none may block: reads run in a thread with a
timeout so that a regression fails instead of hanging.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepbuild.teamcache.local import MAX_RECORD, LocalDir
from stepbuild.teamcache.records import CacheError, make_record
from tests.fifos import promptly, release

KEY = "0123456789abcdef0123456789abcdef"
DIGEST = "sha256:" + "ab" * 32



@pytest.fixture
def shared(tmp_path: Path) -> Iterator[LocalDir]:
    cache = LocalDir(tmp_path / "shared")
    cache.prepare()
    yield cache
    # let go of any reader a regression left blocked on a FIFO of the dir
    for fifo in (tmp_path / "shared").rglob("*"):
        release(fifo)


def test_a_record_is_read_back(shared: LocalDir) -> None:
    record = make_record(KEY, None, None, "2024-01-01T00:00:00Z", "RUN true")
    shared.put_record(KEY, record)
    assert shared.record(KEY) == record
    assert shared.record("f" * 32) is None  # absent: a plain miss, no error


def test_a_fifo_record_is_a_cache_error_not_a_hang(shared: LocalDir) -> None:
    os.mkfifo(shared.root / "keys" / f"{KEY}.json")
    with pytest.raises(CacheError, match="not a regular file"):
        promptly(lambda: shared.record(KEY))


def test_a_fifo_cache_mount_record_is_a_cache_error(shared: LocalDir) -> None:
    os.mkfifo(shared.root / "cache-mounts" / "m.json")
    with pytest.raises(CacheError, match="not a regular file"):
        promptly(lambda: shared.mount_record("m"))


def test_a_symlinked_record_is_refused(shared: LocalDir, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(make_record(KEY, None, None, "x", "RUN true")))
    (shared.root / "keys" / f"{KEY}.json").symlink_to(elsewhere)
    with pytest.raises(CacheError, match="symbolic link"):
        shared.record(KEY)


def test_a_huge_record_is_refused_unread(shared: LocalDir) -> None:
    with open(shared.root / "keys" / f"{KEY}.json", "wb") as f:
        f.truncate(MAX_RECORD + 1)  # sparse: a real one of 10 GiB would be refused the same way
    with pytest.raises(CacheError, match=f"larger than {MAX_RECORD} bytes"):
        shared.record(KEY)


def test_a_fifo_blob_is_a_cache_error_not_a_hang(shared: LocalDir, tmp_path: Path) -> None:
    os.mkfifo(shared.root / "blobs" / "sha256" / DIGEST.split(":")[1])
    dest = tmp_path / "fetched"
    with pytest.raises(CacheError, match="not a regular file"):
        promptly(lambda: shared.fetch_blob({"digest": DIGEST, "size": 10}, dest))


def test_a_blob_is_copied_up_to_its_recorded_size(shared: LocalDir, tmp_path: Path) -> None:
    blob = shared.root / "blobs" / "sha256" / DIGEST.split(":")[1]
    blob.write_bytes(b"0123456789")
    shared.fetch_blob({"digest": DIGEST, "size": 10}, tmp_path / "fetched")
    assert (tmp_path / "fetched").read_bytes() == b"0123456789"
    with pytest.raises(CacheError, match="larger than 4 bytes"):
        shared.fetch_blob({"digest": DIGEST, "size": 4}, tmp_path / "fetched")
    with pytest.raises(CacheError, match="cannot read blob"):
        shared.fetch_blob({"digest": "sha256:" + "cd" * 32, "size": 4}, tmp_path / "x")


def test_a_record_carries_its_explanation_material_and_keys_are_listed(shared: LocalDir) -> None:
    material = {"text": "COPY . /app", "files": {"a.txt": "file 0644 0123"}}
    record = make_record(KEY, None, None, "2024-01-01T00:00:00Z", "COPY . /app",
                         explain=material)
    shared.put_record(KEY, record)
    assert shared.record(KEY) == record and record["explain"] == material
    assert "explain" not in make_record(KEY, None, None, "2024-01-01T00:00:00Z", "RUN true")
    assert shared.keys() == [KEY]
    assert LocalDir(shared.root / "nothing-here").keys() == []
